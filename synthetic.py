"""Synthetic AP-10K: drawn four-legged animals seen from above, in AP-10K's exact json format.

    python synthetic.py --out synthetic_data --train 400 --val 100 --seed 0

writes OUT/data/<id>.jpg and OUT/annotations/ap10k-{train,val}-split1.json (AP-10K's 17 keypoints
and skeleton, species in families as `supercategory`, `area` = box w * h as in AP-10K, image
`background`). Same seed -> byte-identical files. The animal is built in its body frame: u from
tail to head, v to the animal's LEFT, which seen from above (image y down) is (f_y, -f_x) for
heading f. Left and right are defined by geometry only, so a mirrored image is again a valid
animal whose left/right labels swap: flip with pair swap is exact. Keypoints hidden by an
occluder or a later-drawn animal are occluded (v=1) at their true place; those outside the
image and a few random ones are unlabeled (v=0).
"""
import argparse
import os
import time

import cv2
import numpy as np

from files import write_json
from keypoints import AP10K_KEYPOINTS, AP10K_SKELETON

# id, name, family, body colour (BGR), pattern, then in body lengths: body half-width, leg, head, tail
SPECIES = [
    (1, "dog", "Canidae", (40, 85, 150), "plain", 0.17, 0.34, 0.34, 0.32),
    (2, "fox", "Canidae", (30, 110, 215), "plain", 0.15, 0.32, 0.36, 0.45),
    (3, "cat", "Felidae", (125, 125, 135), "spots", 0.15, 0.30, 0.30, 0.50),
    (4, "tiger", "Felidae", (25, 125, 230), "stripes", 0.19, 0.36, 0.34, 0.45),
    (5, "cow", "Bovidae", (225, 225, 225), "patches", 0.22, 0.36, 0.38, 0.28),
    (6, "antelope", "Bovidae", (80, 140, 190), "plain", 0.16, 0.42, 0.34, 0.18),
]
BACKGROUNDS = {1: (70, 140, 60), 2: (150, 190, 210), 3: (105, 110, 110), 4: (225, 215, 200)}  # grass, sand, rock, snow
SHIFT = 4  # cv2 drawing with 4 fractional bits: keypoints are drawn where they are labeled


def _fix(points):
    return np.round(np.asarray(points, dtype=np.float64) * (1 << SHIFT)).astype(np.int32)


def draw(canvas, shapes, value=None):
    """Draw shapes [('poly', pts, colour) | ('line', pts, width, colour) | ('circle', c, r, colour)]
    onto canvas -> canvas; with `value` every shape gets that value (a mask, no anti-aliasing)."""
    aa = cv2.LINE_8 if value is not None else cv2.LINE_AA
    for kind, *args in shapes:
        colour = value if value is not None else tuple(int(c) for c in args[-1])
        if kind == "poly":
            cv2.fillPoly(canvas, [_fix(args[0])], colour, aa, SHIFT)
        elif kind == "line":
            cv2.polylines(canvas, [_fix(args[0])], False, colour, max(1, int(round(args[1]))), aa, SHIFT)
        else:
            cv2.circle(canvas, tuple(_fix(args[0])), int(round(args[1] * (1 << SHIFT))), colour, -1, aa, SHIFT)
    return canvas


def make_animal(rng, species, center, length, heading):
    """Keypoints (17, 2) in AP-10K order and the shapes that draw one animal (paint order)."""
    _, _, _, colour, pattern, bw, leg, head_len, tail_len = species
    f = np.array([np.cos(heading), np.sin(heading)])
    left = np.array([f[1], -f[0]])  # the animal's left, seen from above with y pointing down
    P = lambda u, v: center + length * (u * f + v * left)  # body frame (body lengths) -> pixels
    D = lambda angle: np.array([np.cos(angle), np.sin(angle)])  # body-frame direction, +u toward +v
    body = np.clip(np.array(colour) + rng.integers(-25, 26, 3), 0, 255)
    limb, head_c, paw_c = body * 0.65, np.clip(body * 1.12 + 12, 0, 255), np.array((35, 30, 30))
    shapes, kp = [], np.zeros((17, 2))
    # tail (drawn first, starts under the body's rear tip)
    bend, pts, uv = rng.uniform(-0.6, 0.6), [], np.array([-0.42, 0.0])
    for t in np.linspace(0, 1, 7):
        pts.append(P(*uv))
        uv = uv + tail_len / 6 * D(np.pi + bend * t)
    shapes += [("line", pts[:4], 0.06 * length, limb), ("line", pts[3:], 0.035 * length, limb)]
    # body: ellipse from u = -0.44 (root of tail at -0.42) to u = 0.36 (neck at 0.34)
    a = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    shapes.append(("poly", [P(-0.04 + 0.40 * np.cos(t), bw * np.sin(t)) for t in a], body))
    if pattern == "stripes":
        for u in rng.uniform(-0.35, 0.28, 6):
            half = bw * np.sqrt(max(0.0, 1 - ((u + 0.04) / 0.40) ** 2)) * 0.85
            stripe = [P(u, -half), P(u + rng.uniform(-0.04, 0.04), 0), P(u, half)]
            shapes.append(("line", stripe, 0.025 * length, (20, 20, 20)))
    n_spots, r = {"spots": (9, 0.025), "patches": (3, 0.07)}.get(pattern, (0, 0.0))
    for _ in range(n_spots):  # spots or patches
        u, v = rng.uniform(-0.32, 0.25), rng.uniform(-0.6, 0.6) * bw
        shapes.append(("circle", P(u, v), r * length * rng.uniform(0.7, 1.3), (30, 30, 30)))
    kp[3], kp[4] = P(0.34, 0), P(-0.42, 0)
    # legs: side +1 = left, -1 = right; front legs reach forward, back legs backward
    thick = 0.065 * length
    legs = [(1, 1, (5, 6, 7)), (-1, 1, (8, 9, 10)), (1, -1, (11, 12, 13)), (-1, -1, (14, 15, 16))]
    for side, front, (s_i, e_i, p_i) in legs:  # shoulder/hip, elbow/knee, paw
        root = np.array([0.22 if front > 0 else -0.28, side * 0.8 * bw])
        t1 = front * rng.uniform(0.15, 1.0)                       # upper leg angle from lateral
        t2 = t1 - front * rng.uniform(0.2, 0.9)                   # joint bends back toward lateral
        up = leg / 2 * rng.uniform(0.85, 1.15) * np.array([np.sin(t1), side * np.cos(t1)])
        lo = leg / 2 * rng.uniform(0.85, 1.15) * np.array([np.sin(t2), side * np.cos(t2)])
        kp[s_i], kp[e_i], kp[p_i] = P(*root), P(*(root + up)), P(*(root + up + lo))
        shapes += [("line", [kp[s_i], kp[e_i], kp[p_i]], thick, limb), ("circle", kp[s_i], 0.7 * thick, limb),
                   ("circle", kp[e_i], 0.75 * thick, limb * 0.8)]
        if front > 0:   # front paw: round
            shapes.append(("circle", kp[p_i], 0.06 * length, paw_c))
        else:           # back paw: a square along the leg
            d = lo / np.linalg.norm(lo) * 0.055 * length
            n = np.array([-d[1], d[0]])
            shapes.append(("poly", [kp[p_i] + d + n, kp[p_i] + d - n, kp[p_i] - d - n, kp[p_i] - d + n], paw_c))
    # head: turned by psi from the body axis, an egg from the neck (s = 0) to the nose (s = 1)
    psi = np.clip(rng.normal(0, 0.25), -0.6, 0.6)
    hd, hw = D(psi), 0.5 * rng.uniform(0.55, 0.7)               # half-width in head lengths
    hn = np.array([-hd[1], hd[0]])                               # left of the head axis
    H = lambda s, t: P(*(np.array([0.34, 0.0]) + head_len * (s * hd + t * hn)))  # along, left
    for side in (1, -1):  # ears
        shapes.append(("poly", [H(0.15, side * 0.6 * hw), H(0.02, side * 1.25 * hw), H(0.35, side * 0.8 * hw)], limb))
    shapes.append(("poly", [H(0.5 + 0.5 * np.cos(t), hw * np.sin(t) * (0.8 - 0.4 * np.cos(t))) for t in a], head_c))
    kp[0], kp[1], kp[2] = H(0.6, 0.5 * hw), H(0.6, -0.5 * hw), H(0.97, 0)  # eyes, nose
    for k, r, c in ((0, 0.03, 245), (0, 0.016, 10), (1, 0.03, 245), (1, 0.016, 10), (2, 0.028, 15)):
        shapes.append(("circle", kp[k], r * length, (c, c, c)))  # eyes (white, pupil), nose
    return kp, shapes


def make_background(rng, size, kind):
    """Textured ground: low-frequency colour noise, pixel noise, and a few blobs and twigs."""
    w, h = size
    base = np.array(BACKGROUNDS[kind], dtype=np.float32)
    tone = rng.normal(0, 25, (5, 6, 1)) + rng.normal(0, 8, (5, 6, 3))   # mostly brightness
    low = cv2.resize(tone.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.clip(base + low + rng.normal(0, 6, (h, w, 1)), 0, 255).astype(np.uint8)
    for _ in range(rng.integers(6, 16)):
        c = np.clip(base * rng.uniform(0.7, 1.2) + rng.normal(0, 8, 3), 0, 255)
        if rng.random() < 0.5:
            draw(img, [("circle", rng.uniform(0, (w, h)), rng.uniform(3, 14), c)])
        else:
            p = rng.uniform(0, (w, h))
            draw(img, [("line", [p, p + rng.normal(0, 25, 2)], rng.uniform(1, 3), c)])
    return img


def render_image(rng, size=(320, 240)):
    """One image: (BGR image, background image, animals, background kind). Each animal is a dict with
    species, keypoints (17, 3) [x, y, v], bbox [x, y, w, h], mask (H, W) bool of its drawn body."""
    w, h = size
    n_animals = 2 if rng.random() < 0.25 else 1
    placed = []
    for i in range(n_animals):
        for _ in range(20):
            length = min(w, h) * (rng.uniform(0.36, 0.52) if n_animals == 1 else rng.uniform(0.28, 0.4))
            center = rng.uniform((0.45 * length, 0.45 * length), (w - 0.45 * length, h - 0.45 * length))
            heading = rng.choice([0.0, np.pi]) + rng.uniform(-1.0, 1.0)  # mostly side-on, like photos
            if all(np.linalg.norm(center - c) > 0.75 * (length + l) for c, l, _ in placed):
                break
        placed.append((center, length, heading))
    species = [SPECIES[rng.integers(len(SPECIES))] for _ in placed]
    kinds = [k for k in BACKGROUNDS if all(np.abs(np.array(BACKGROUNDS[k]) - s[3]).sum() > 120 for s in species)]
    kind = int(kinds[rng.integers(len(kinds))]) if kinds else 1
    background = make_background(rng, size, kind)
    image, animals = background.copy(), []
    for sp, (center, length, heading) in zip(species, placed):
        kp, shapes = make_animal(rng, sp, center, length, heading)
        mask = draw(np.zeros((h, w), np.uint8), shapes, 255) > 0  # the pixels it covers
        animals.append(dict(species=sp, xy=kp, mask=mask, length=length))
        draw(image, shapes)
    cover = [a["mask"] for a in animals]  # what was drawn after animal i hides its keypoints
    if rng.random() < 0.3:  # an occluder (bush or rock) near a random keypoint
        target = animals[rng.integers(len(animals))]
        c = target["xy"][rng.integers(17)] + rng.normal(0, 0.1 * target["length"], 2)
        r = target["length"] * rng.uniform(0.12, 0.22)
        col = np.array((40, 110, 40)) if rng.random() < 0.5 else np.array((95, 100, 105))
        shapes = [("circle", c + rng.normal(0, 0.5 * r, 2), r * rng.uniform(0.6, 1.0), col + rng.integers(-20, 21, 3))
                  for _ in range(4)]
        cover.append(draw(np.zeros((h, w), np.uint8), shapes, 255) > 0)
        draw(image, shapes)
    for i, a in enumerate(animals):
        a["keypoints"] = kps = np.zeros((17, 3))
        for k, (x, y) in enumerate(a["xy"]):
            xi, yi = int(round(x)), int(round(y))
            if not (0 <= xi < w and 0 <= yi < h) or rng.random() < 0.02:
                continue  # outside the image, or skipped by the "annotator": v = 0, [0, 0, 0]
            kps[k] = (x, y, 1 if any(m[yi, xi] for m in cover[i + 1:]) else 2)  # hidden: occluded
        a["bbox"] = [float(v) for v in cv2.boundingRect(a["mask"].astype(np.uint8))]  # [x, y, w, h] of its pixels
    return image, background, animals, kind


def generate(out_dir, n_train, n_val, seed, image_size=(320, 240), jpeg_quality=92):
    """Write n_train + n_val images and the two AP-10K-format json files -> their paths. Image i of
    split s is drawn from default_rng([seed, s, i]): each is reproducible on its own."""
    os.makedirs(os.path.join(out_dir, "data"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    categories = [{"supercategory": fam, "id": cid, "name": sp, "keypoints": list(AP10K_KEYPOINTS),
                   "skeleton": [list(p) for p in AP10K_SKELETON]} for cid, sp, fam, *_ in SPECIES]
    image_id, ann_id, paths = 0, 0, []
    for split_index, (split, n) in enumerate([("train", n_train), ("val", n_val)]):
        images, annotations = [], []
        for i in range(n):
            image, _, animals, kind = render_image(np.random.default_rng([seed, split_index, i]), image_size)
            image_id += 1
            name = f"{image_id:012d}.jpg"
            cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])[1].tofile(f"{out_dir}/data/{name}")
            images.append({"license": 1, "id": image_id, "file_name": name, "width": image_size[0],
                           "height": image_size[1], "background": kind})
            for a in animals:
                ann_id += 1
                kps = [round(float(v), 2) if j % 3 < 2 else int(v) for j, v in enumerate(a["keypoints"].ravel())]
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": a["species"][0],
                                    "bbox": a["bbox"], "area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0,
                                    "num_keypoints": int((a["keypoints"][:, 2] > 0).sum()), "keypoints": kps})
        data = {"info": {"description": "Synthetic AP-10K (synthetic.py)", "version": "1.0", "seed": seed},
                "licenses": [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
                "images": images, "annotations": annotations, "categories": categories}
        paths.append(os.path.join(out_dir, "annotations", f"ap10k-{split}-split1.json"))
        write_json(paths[-1], data)
    return paths


def get_args_parser():
    parser = argparse.ArgumentParser("Synthetic AP-10K generator")
    group = parser.add_argument_group("output")
    group.add_argument("--out", required=True, help="output root: writes OUT/data/*.jpg and OUT/annotations/*.json")
    group.add_argument("--train", type=int, default=400, help="number of training images")
    group.add_argument("--val", type=int, default=100, help="number of validation images")
    group.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical files")
    group.add_argument("--width", type=int, default=320, help="image width in pixels")
    group.add_argument("--height", type=int, default=240, help="image height in pixels")
    return parser


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    start = time.time()
    train_json, val_json = generate(args.out, args.train, args.val, args.seed, (args.width, args.height))
    print(f"wrote {args.train} + {args.val} images to {args.out}/data, {train_json}, {val_json} "
          f"in {time.time() - start:.1f}s")
