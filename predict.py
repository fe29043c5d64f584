"""A trained model on the boxes of a dataset (`predict_dataset`, what evaluate.py scores), on
your own photos (`run_photos`: `evaluate.py CKPT --images ...`), and the pieces video.py builds on.

Every box is cropped as in evaluation, predicted with the flip test and decoded with Eq. 1. Where
no box is given the animal is searched for:
1. coarse pass: the whole image and a grid of square windows (SEARCH_WINDOWS), predicted without
   the flip test; the window whose keypoints score highest on average wins. A model sees animals
   at the scale of its training crops only: a small animal in a whole video frame gets confident
   garbage, hence the windows;
2. a box around the winner's keypoints scoring >= SEARCH_MIN_SCORE, grown by SEARCH_MARGIN on
   each side as a labeled box surrounds its keypoints (the crop pads it by 1.25, as every box);
3. the real pass on that box, with the flip test.
`--whole-frame` skips the search (the whole image is the box, as before the search existed).
"""
import math
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

import visualize
from annotations import clip_box
from checkpoint import model_from_checkpoint
from dataset import make_loader
from distributed import all_gather_list, own_shard
from files import finite_number, finite_numbers, read_json, write_json
from keypoints import keypoint_sides
from model import autocast
from transforms import (TopDownTransform, box_to_center_scale, flip_back_heatmaps,
                        get_affine_transform, keypoints_from_heatmaps, read_image)

VIS_THRESHOLD = 0.2       # maxima above this count towards the instance score (mmpose vis_thr)
PCUTOFF = 0.4             # default --pcutoff: overlays leave out keypoints scoring below it
                          # (a well-placed keypoint scores 0.5-0.9 here; DeepLabCut's 0.6 is for
                          # its own sigmoid scores)
SEARCH_WINDOWS = (1 / 2, 1 / 3)  # window sides, fractions of the shorter image side, 50% overlap
SEARCH_MIN_SCORE = VIS_THRESHOLD  # keypoints at least this sure span the searched box
SEARCH_MARGIN = 0.15      # that box: their extent + 0.15 x its longer side on every side
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@torch.no_grad()
def predict_heatmaps(model, images, flip_pairs, flip, amp):
    """Heatmaps of a batch of crops (B, 3, H, W) -> numpy (B, K, h, w) float32; with the flip test
    averaged with those of the mirrored crops, flipped back (transforms.flip_back_heatmaps)."""
    with autocast(images.device.type, amp):
        heatmaps = model(images)["heatmaps"].float().cpu().numpy()
        if flip:
            mirrored = model(images.flip(3))["heatmaps"].float().cpu().numpy()
            heatmaps = 0.5 * (heatmaps + flip_back_heatmaps(mirrored, flip_pairs))
    return heatmaps


KEYPOINT_SCORE = "the heatmap maximum at the keypoint, clipped to [0, 1]"  # named in the outputs


def keypoint_scores(maxvals):
    """The score written for each keypoint: its heatmap maximum (the peak Eq. 1 decodes) clipped
    to [0, 1]. The heatmaps regress Gaussians of peak 1, so a maximum overshoots 1 a little (1.06
    seen) or dips below 0; clipped it reads on a likelihood's scale, though it is no calibrated
    probability. instance_scores keeps the raw maxima (mmpose), so AP is unchanged."""
    return np.clip(maxvals, 0.0, 1.0)


def instance_scores(maxvals, box_scores):
    """mmpose's rescoring: box score x mean of the keypoint maxima above VIS_THRESHOLD (0 when
    none is). maxvals (B, K), box_scores (B,) -> (B,)."""
    above = maxvals > VIS_THRESHOLD
    mean = (maxvals * above).sum(1) / np.maximum(above.sum(1), 1)
    return np.asarray(box_scores, np.float64) * mean


def rounded_list(values):
    """An array (keypoints (K, 3), a centre (2,)) -> a flat list rounded to 1/1000 px (COCO's)."""
    return [round(float(v), 3) for v in np.asarray(values).reshape(-1)]


def predict_dataset(model, dataset, *, batch_size, workers, flip, amp, device, rank=0, world=1,
                    progress=False):
    """Every box of a KeypointDataset -> one prediction each, COCO results format plus
    'ann_id' (None for detections), 'center' and 'scale' (the crop), in dataset order. Rank r
    predicts indices r, r + world, ...; the lists are gathered, so every rank gets all."""
    indices = list(range(rank, len(dataset), world))
    loader = make_loader(torch.utils.data.Subset(dataset, indices), batch_size, workers,
                         shuffle=False, pin_memory=device.type == "cuda")
    results, bar = [], tqdm(loader, desc="eval", leave=False,
                            disable=not (progress and sys.stderr.isatty()))
    model.eval()
    with own_shard():  # an image of this rank's share that fails is said by this rank
        for batch in bar:
            images = batch["image"].to(device, non_blocking=True)
            heatmaps = predict_heatmaps(model, images, dataset.flip_pairs, flip, amp)
            keypoints = keypoints_from_heatmaps(heatmaps, batch["center"].numpy(),
                                                batch["scale"].numpy())  # (B, K, 3)
            scores = instance_scores(keypoints[..., 2], batch["bbox_score"].numpy())
            keypoints[..., 2] = keypoint_scores(keypoints[..., 2])
            for i in range(len(scores)):
                results.append({
                    "index": indices[len(results)], "image_id": int(batch["image_id"][i]),
                    "category_id": int(batch["category_id"][i]),
                    "ann_id": None if batch["detection"][i] else int(batch["ann_id"][i]),
                    "keypoints": rounded_list(keypoints[i]), "score": float(scores[i]),
                    "center": rounded_list(batch["center"][i]),
                    "scale": rounded_list(batch["scale"][i])})
    results = sorted(all_gather_list(results), key=lambda r: r["index"])
    return [{k: v for k, v in r.items() if k != "index"} for r in results]


def prepare_model(ckpt, device, compile_model):
    """The checkpoint's model on `device`, channels_last (faster convolutions), eval mode."""
    model = model_from_checkpoint(ckpt).to(device, memory_format=torch.channels_last).eval()
    return torch.compile(model) if compile_model else model


def draw_context(ckpt, names_on):
    """What every overlay needs from the checkpoint: skeleton, sides, names (or None)."""
    names = ckpt["keypoint_names"]
    return {"skeleton": ckpt["skeleton"], "names": names if names_on else None,
            "sides": keypoint_sides(names, ckpt["flip_pairs"])}


# ----------------------------------------------------------------------------- crops -> poses
@dataclass
class Predictor:
    """A model and how to run it on crops of whole images (the checkpoint's crop size and
    normalisation); batch_size: crops per forward pass."""
    model: torch.nn.Module
    transform: TopDownTransform
    flip_pairs: list
    flip: bool
    amp: str
    device: torch.device
    batch_size: int

    @classmethod
    def from_checkpoint(cls, model, ckpt, flip, amp, device, batch_size):
        cfg = ckpt["model_config"]
        transform = TopDownTransform(cfg["image_size"], [1, 1], cfg["normalize"], [], None,
                                     flip=False)
        return cls(model.eval(), transform, [tuple(p) for p in ckpt["flip_pairs"]], flip, amp,
                   device, batch_size)

    def crop(self, image, bbox):
        """A BGR image and a box [x, y, w, h] -> the network input (3, H, W) float32 and the crop's
        center, scale (2,) each, as evaluation crops a detected box (clipped to the image first)."""
        H, W = self.transform.image_size
        center, scale = box_to_center_scale(clip_box(bbox, image.shape[1], image.shape[0]), W / H)
        M = np.vstack([get_affine_transform(center, scale, 0.0, (H, W)), [0, 0, 1]])
        return self.transform.crop(image, M), center, scale

    def keypoints(self, images, boxes, flip=None):
        """Keypoints (N, K, 3) [x, y, score] in image pixels of box n of images[n]; flip=None takes
        the predictor's flip test."""
        flip, out = self.flip if flip is None else flip, []
        for start in range(0, len(boxes), self.batch_size):
            crops, centers, scales = zip(*[self.crop(im, b) for im, b in zip(
                images[start:start + self.batch_size], boxes[start:start + self.batch_size])])
            batch = torch.from_numpy(np.stack(crops)).to(self.device)
            heatmaps = predict_heatmaps(self.model, batch, self.flip_pairs, flip, self.amp)
            out.append(keypoints_from_heatmaps(heatmaps, np.stack(centers), np.stack(scales)))
        return np.concatenate(out) if out else np.zeros((0, 0, 3))


def search_windows(width, height):
    """The coarse pass's boxes: the whole image, then for each side s in SEARCH_WINDOWS (times
    the shorter side) a grid of s x s windows overlapping by half, spread edge to edge."""
    boxes = [[0.0, 0.0, float(width), float(height)]]
    for fraction in SEARCH_WINDOWS:
        side = fraction * min(width, height)
        nx, ny = (math.ceil((n - side) / (side / 2) - 1e-9) + 1 for n in (width, height))
        boxes += [[(width - side) * i / max(nx - 1, 1), (height - side) * j / max(ny - 1, 1),
                   side, side] for j in range(ny) for i in range(nx)]
    return boxes


def box_around(keypoints, reference, width, height):
    """The box of the keypoints (K, 3) scoring at least SEARCH_MIN_SCORE (the best two when
    fewer do), grown by SEARCH_MARGIN of its longer side on every side, at least a quarter of
    the `reference` box (where they were found) on each side: two keypoints close together say
    little of the animal's size. Clipped to the image, as training boxes are; the keypoints too
    (a sure one in the crop's padding is at the image's edge): the box has area in the image,
    else (no finite keypoints) the reference box is returned."""
    sure = keypoints[:, 2] >= SEARCH_MIN_SCORE
    if sure.sum() < 2:
        sure = np.isin(np.arange(len(keypoints)), np.argsort(-keypoints[:, 2])[:2])
    points = keypoints[sure, :2].clip(0, [width - 1, height - 1])
    low, high = points.min(0), points.max(0)
    half = (high - low) / 2 + SEARCH_MARGIN * (high - low).max()
    half = np.maximum(half, np.asarray(reference[2:]) / 8)
    center = (low + high) / 2
    box = clip_box([*(center - half), *(2 * half)], width, height)
    return box if min(box[2:]) > 0 else clip_box(reference, width, height)


def search(predictor, images):
    """Coarse pass for each image (module docstring, steps 1-2) -> one box per image."""
    windows = [search_windows(im.shape[1], im.shape[0]) for im in images]
    owners = [i for i, w in enumerate(windows) for _ in w]
    keypoints = predictor.keypoints([images[i] for i in owners], sum(windows, []), flip=False)
    boxes, start = [], 0
    for image, boxes_i in zip(images, windows):
        found = keypoints[start:start + len(boxes_i)]              # (n windows, K, 3)
        best = int(found[..., 2].mean(1).argmax())
        boxes.append(box_around(found[best], boxes_i[best], image.shape[1], image.shape[0]))
        start += len(boxes_i)
    return boxes


def find_poses(predictor, images, given, whole=False, source="boxes"):
    """Poses in BGR images: given[i] a list of (bbox, score) for image i (found as `source` says),
    or None: search it (the whole image with whole=True) -> per image a list of {bbox, score, box
    (how it was found: boxes / follow / search / whole), keypoints (K, 3)}, keypoints clipped to
    the image (a point in the crop's black border goes to its edge), scores (keypoint_scores)."""
    todo = [i for i, g in enumerate(given) if g is None]
    found = (search(predictor, [images[i] for i in todo]) if not whole else
             [[0.0, 0.0, float(images[i].shape[1]), float(images[i].shape[0])] for i in todo])
    boxes = {i: [(box, 1.0)] for i, box in zip(todo, found)}
    how = "whole" if whole else "search"
    owners, items = [], []
    for i, image in enumerate(images):
        for bbox, score in (given[i] if given[i] is not None else boxes[i]):
            owners.append(i)
            items.append((bbox, score, source if given[i] is not None else how))
    keypoints = predictor.keypoints([images[i] for i in owners], [b for b, _, _ in items])
    scores = instance_scores(keypoints[..., 2], [s for _, s, _ in items]) if items else []
    poses = [[] for _ in images]
    for i, (bbox, _, how), k, s in zip(owners, items, keypoints, scores):
        h, w = images[i].shape[:2]
        k[:, :2] = k[:, :2].clip(0, [w - 1, h - 1])
        k[:, 2] = keypoint_scores(k[:, 2])
        poses[i].append({"bbox": [round(float(v), 2) for v in bbox], "score": float(s),
                         "box": how, "keypoints": k})
    return poses


# ----------------------------------------------------------------------------- own photos
def check_box(entry, where, width, height):
    """A user box: {"bbox": [x, y, w, h], "score": s (optional)} with finite numbers, positive
    size and some area inside the width x height image -> (bbox, score)."""
    bbox = finite_numbers(entry.get("bbox"), 4, where, "bbox").tolist()
    score = finite_number(entry.get("score", 1.0), where, "score", minimum=0)
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise ValueError(f"{where}: box width and height must be positive, got {bbox}")
    if min(clip_box(bbox, width, height)[2:]) <= 0:
        raise ValueError(f"{where}: box {bbox} lies outside the {width}x{height} image")
    return bbox, score


def read_box_list(path):
    entries = read_json(path, "--boxes file")
    if not (isinstance(entries, list) and entries and all(isinstance(e, dict) for e in entries)):
        raise ValueError(f"--boxes {path}: expected a non-empty json list of objects")
    return entries


def read_photos(paths):
    """The photos of --images -> [{"id", "file_name" (as listed), "width", "height"}]; each is
    decoded once here, so a truncated or unreadable file stops the run before any output."""
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += sorted(os.path.join(p, f) for f in os.listdir(p)
                            if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"--images: {p!r} is neither a file nor a directory")
    if not files:
        raise ValueError(f"--images {' '.join(paths)}: no image files found "
                         f"({', '.join(IMAGE_EXTENSIONS)})")
    photos = []
    for i, path in enumerate(files):
        height, width = read_image(path)[0].shape[:2]
        photos.append({"id": i + 1, "file_name": path, "width": width, "height": height})
    return photos


def photo_lookup(photos):
    """Where an entry of --boxes may point: {path as listed or absolute: photo indices} and
    {bare file name: photo indices}."""
    exact, bare = defaultdict(set), defaultdict(set)
    for i, p in enumerate(photos):
        name = p["file_name"]
        exact[name].add(i)
        exact[os.path.abspath(name)].add(i)
        bare[os.path.basename(name)].add(i)
    return exact, bare


def photo_boxes(path, photos):
    """--boxes for photos -> {photo index: [(bbox, score), ...]}, several boxes per photo if
    given. An entry's file_name is the path as listed or its absolute path, else the bare file
    name when that is unambiguous."""
    exact, bare = photo_lookup(photos)
    boxes = defaultdict(list)
    for n, entry in enumerate(read_box_list(path)):
        name = entry.get("file_name")
        where = f"--boxes {path}, entry {n} ({name!r})"
        match = (exact.get(name) or bare.get(name, set())) if isinstance(name, str) else set()
        if len(match) != 1:
            raise ValueError(f"{where}: " + ("no such photo among --images" if not match else
                             "the name matches several photos; give the path as listed"))
        i = min(match)  # read only: the tables serve every entry
        boxes[i].append(check_box(entry, where, photos[i]["width"], photos[i]["height"]))
    return boxes


def overlay_names(photos):
    """vis/<stem>_pose.png; where two photos share a stem, vis/<stem>_<image id>_pose.png, and
    where even that is taken (by a photo named so, or in another letter case) a number added
    until the name is new: no overlay replaces another, on any file system."""
    stems = [os.path.splitext(os.path.basename(p["file_name"]))[0] for p in photos]
    keys = [s.lower() for s in stems]
    repeated = {k for k, count in Counter(keys).items() if count > 1}
    names, taken = [None] * len(photos), set()
    for i in sorted(range(len(photos)), key=lambda i: keys[i] in repeated):  # own names first
        stem = stems[i] if keys[i] not in repeated else f"{stems[i]}_{photos[i]['id']}"
        name, n = f"{stem}_pose.png", 1
        while name.lower() in taken:
            n += 1
            name = f"{stem}_{n}_pose.png"
        names[i] = name
        taken.add(name.lower())
    return [os.path.join("vis", name) for name in names]


def photo_poses(predictor, photos, boxes, whole, overlay):
    """Poses of every photo, `batch_size` photos decoded at a time -> COCO results; with --boxes
    exactly the given boxes (a photo without one gets no pose), else the searched box (or the
    whole photo). overlay(image, photo, instances) draws each photo once."""
    results = []
    for start in range(0, len(photos), predictor.batch_size):
        chunk = photos[start:start + predictor.batch_size]
        images = [read_image(p["file_name"])[0] for p in chunk]
        given = [boxes.get(start + n, []) if boxes is not None else None for n in range(len(chunk))]
        for p, image, poses in zip(chunk, images, find_poses(predictor, images, given, whole)):
            results += [{"image_id": p["id"], "file_name": p["file_name"], "category_id": 1,
                         "bbox": pose["bbox"], "box": pose["box"],
                         "keypoints": rounded_list(pose["keypoints"]), "score": pose["score"]}
                        for pose in poses]
            overlay(image, p, poses)
    return results


def run_photos(model, ckpt, args, flip, device, out_dir):
    """Own photos -> photo_results.json (COCO keypoint results, plus file_name and box: how it was
    found), photo_images.json (the images and the category: COCO(photo_images.json).loadRes(
    photo_results.json) works; what a keypoint's score is) and an overlay per photo in vis/."""
    photos = read_photos(args.images)
    boxes = photo_boxes(args.boxes, photos) if args.boxes else None
    for p, name in zip(photos, overlay_names(photos)):
        p["overlay"] = name
    style = draw_context(ckpt, args.vis_names)
    os.makedirs(os.path.join(out_dir, "vis"), exist_ok=True)

    def overlay(image, photo, poses):
        drawn = visualize.overlay(image, [p["keypoints"] for p in poses], style["skeleton"],
                                  style["sides"], args.pcutoff, names=style["names"],
                                  boxes=[p["bbox"] for p in poses])
        visualize.write_image(os.path.join(out_dir, photo["overlay"]), drawn)

    predictor = Predictor.from_checkpoint(model, ckpt, flip, args.amp, device, args.batch_size)
    results = photo_poses(predictor, photos, boxes, args.whole_frame, overlay)
    write_json(os.path.join(out_dir, "photo_results.json"), results)
    category = {"id": 1, "name": "instance", "keypoints": list(ckpt["keypoint_names"]),
                "skeleton": [[a + 1, b + 1] for a, b in ckpt["skeleton"]]}  # COCO's: 1-based
    write_json(os.path.join(out_dir, "photo_images.json"), {
        "images": photos, "categories": [category], "keypoint_score": KEYPOINT_SCORE}, indent=1)
    without = len(photos) - len({r["image_id"] for r in results})
    how = ("--boxes" if boxes is not None else "the whole photo" if args.whole_frame else
           "a searched box")
    print(f"{len(results)} instances in {len(photos)} images ({how})"
          + (f" ({without} without a box in --boxes: no pose)" if without else "")
          + f" -> {os.path.join(out_dir, 'photo_results.json')} (COCO results; keypoint names "
            f"in photo_images.json), overlays in {os.path.join(out_dir, 'vis')}")

