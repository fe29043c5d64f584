"""Top-down keypoint data for PromptPose (paper Sec. 4.1): COCO-format json -> crops + heatmaps.

One dataset class for any COCO-format keypoint file (AP-10K, COCO person, your own data),
the AP-10K few-shot split (Table 2), and the geometry that evaluation reuses.

Coordinate conventions (used by every function below):
- Image pixel (i, j) has its centre at (x, y) = (i, j); a horizontal flip maps x -> width - 1 - x.
- A box is COCO [x, y, w, h]; its center is (x + w/2, y + h/2); `scale` is the (w, h) in image
  pixels of the padded, aspect-ratio-filled box that is warped onto the network input.
- The affine maps `center` to (W/2, H/2) of the output and `scale` onto (W, H) (SimpleBaseline).
- Heatmap coordinates: x_hm = x_in / stride with stride = input / heatmap size (4); heatmap
  pixel i has its centre at i and covers [i - 0.5, i + 0.5].
"""
import contextlib
import io
import json
import os
import re
import warnings
from collections import Counter

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset, get_worker_info

AP10K_KEYPOINTS = [
    "left_eye", "right_eye", "nose", "neck", "root_of_tail",
    "left_shoulder", "left_elbow", "left_front_paw", "right_shoulder", "right_elbow",
    "right_front_paw", "left_hip", "left_knee", "left_back_paw", "right_hip", "right_knee",
    "right_back_paw"]
AP10K_FLIP_PAIRS = [(0, 1), (5, 8), (6, 9), (7, 10), (11, 14), (12, 15), (13, 16)]
AP10K_SIGMAS = np.array([.025, .025, .026, .035, .035, .079, .072, .062, .079, .072, .062,
                         .107, .087, .089, .107, .087, .089])
AP10K_UPPER_BODY = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10]
AP10K_LOWER_BODY = [4, 11, 12, 13, 14, 15, 16]
# AP-10K skeleton as written in its json (1-based keypoint indices).
AP10K_SKELETON = [[1, 2], [1, 3], [2, 3], [3, 4], [4, 5], [4, 6], [6, 7], [7, 8], [4, 9],
                  [9, 10], [10, 11], [5, 12], [12, 13], [13, 14], [5, 15], [15, 16], [16, 17]]

COCO_KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]
COCO_FLIP_PAIRS = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07,
                        .87, .87, .89, .89]) / 10.0
COCO_UPPER_BODY = list(range(11))
COCO_LOWER_BODY = list(range(11, 17))
DEFAULT_SIGMA = 0.05  # OKS sigma for keypoints of an unknown dataset when none are given

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Training augmentation (SimpleBaseline / mmpose AP-10K settings, see METHOD.md).
FLIP_PROB = 0.5
HALF_BODY_PROB = 0.3
HALF_BODY_MIN_KEYPOINTS = 8   # half-body only when MORE than this many keypoints are labeled
HALF_BODY_PADDING = 1.5
SCALE_SIGMA = 0.5             # scale factor ~ N(1, 0.5) clipped to [0.5, 1.5]
ROT_SIGMA = 40.0              # rotation ~ N(0, 40) deg clipped to [-80, 80] ...
ROT_PROB = 0.6                # ... applied with probability 0.6


# ---------------------------------------------------------------- geometry (pure numpy)

def box_to_center_scale(box, aspect_ratio, padding=1.25):
    """COCO box [x, y, w, h] -> center (2,) and scale (2,) = (w, h) of the padded box in pixels.

    The box is first enlarged (never shrunk) to `aspect_ratio` = input width / height, then
    multiplied by `padding`.
    """
    x, y, w, h = [float(v) for v in box[:4]]
    center = np.array([x + 0.5 * w, y + 0.5 * h])
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return center, np.array([w, h]) * padding


def get_affine_transform(center, scale, rot_deg, output_size, inv=False):
    """(2, 3) affine taking image pixels to output pixels (or back with inv=True).

    The output shows the box of size `scale` (w, h) around `center`, rotated by `rot_deg`
    counter-clockwise as displayed (same sense as cv2.getRotationMatrix2D):
        out = S R (p - center) + (W/2, H/2),   S = diag(W / scale_w, H / scale_h).
    output_size is (W, H).
    """
    W, H = output_size
    t = np.deg2rad(rot_deg)
    R = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    A = np.diag([W / scale[0], H / scale[1]]) @ R                  # (2, 2)
    M = np.eye(3)
    M[:2, :2] = A
    M[:2, 2] = np.array([W / 2.0, H / 2.0]) - A @ np.asarray(center, dtype=np.float64)
    if inv:
        M = np.linalg.inv(M)
    return M[:2].copy()


def affine_points(points, M):
    """Apply a (2, 3) affine to points (N, 2) -> (N, 2)."""
    points = np.asarray(points, dtype=np.float64)
    return points @ M[:, :2].T + M[:, 2]


def flip_permutation(num_keypoints, flip_pairs):
    """perm (K,) with perm[a] = b and perm[b] = a for each pair: flipped[k] = original[perm[k]]."""
    perm = np.arange(num_keypoints)
    for a, b in flip_pairs:
        perm[a], perm[b] = b, a
    return perm


def flip_image(image):
    """Mirror an (H, W, C) image left-right: pixel x -> W - 1 - x."""
    return np.ascontiguousarray(image[:, ::-1])


def flip_keypoints(keypoints, image_width, flip_pairs):
    """Mirror keypoints (..., K, D>=2) in an image of width `image_width` and swap left/right.

    x -> image_width - 1 - x; any extra columns (visibility) move with their keypoint.
    """
    out = np.array(keypoints, dtype=np.float64)
    out[..., 0] = image_width - 1 - out[..., 0]
    return out[..., flip_permutation(out.shape[-2], flip_pairs), :]


def flip_back_heatmaps(heatmaps, flip_pairs, shift=True):
    """Flip test: heatmaps (N, K, h, w) predicted on mirrored crops -> the unmirrored frame.

    Mirrors along w and swaps left/right channels. Mirroring the 256-wide input maps x_in to
    255 - x_in, i.e. heatmap x to 63.75 - x, while mirroring the heatmap maps x to 63 - x:
    the flipped-back map sits (stride - 1) / stride = 0.75 px left of the truth. shift=True
    moves it one pixel right (the SimpleBaseline correction; column 0 keeps its value).
    """
    out = np.ascontiguousarray(heatmaps[..., ::-1][:, flip_permutation(heatmaps.shape[1], flip_pairs)])
    if shift:
        out[..., 1:] = out[..., :-1].copy()
    return out


def encode_heatmaps(keypoints_hm, visible, heatmap_size, sigma=2.0):
    """Gaussian targets: keypoints (K, 2) in heatmap pixels -> target (K, h, w), weight (K,).

    target_k(x, y) = exp(-((x - x_k)^2 + (y - y_k)^2) / (2 sigma^2)) at the exact sub-pixel
    location (peak 1, unnormalised). weight_k = 0 (and target 0) for unlabeled keypoints and
    for keypoints outside the heatmap extent [-0.5, w - 0.5) x [-0.5, h - 0.5).
    """
    w, h = heatmap_size
    kp = np.asarray(keypoints_hm, dtype=np.float32)
    x, y = kp[:, 0], kp[:, 1]
    inside = (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)
    weight = (np.asarray(visible) > 0) & inside
    gx = np.exp(-(np.arange(w, dtype=np.float32)[None] - x[:, None]) ** 2 / (2 * sigma ** 2))  # (K, w)
    gy = np.exp(-(np.arange(h, dtype=np.float32)[None] - y[:, None]) ** 2 / (2 * sigma ** 2))  # (K, h)
    target = gy[:, :, None] * gx[:, None, :] * weight[:, None, None]                         # (K, h, w)
    return target.astype(np.float32), weight.astype(np.float32)


def decode_heatmaps(heatmaps):
    """heatmaps (N, K, h, w) -> coords (N, K, 2) in heatmap pixels, maxvals (N, K).

    Argmax, then a quarter-pixel step toward the higher neighbour on each axis (where both
    neighbours exist; SimpleBaseline required 1 < x < w - 1, which skipped column 1).
    """
    N, K, h, w = heatmaps.shape
    flat = heatmaps.reshape(N, K, h * w)
    idx = flat.argmax(axis=2)                                   # (N, K)
    maxvals = np.take_along_axis(flat, idx[..., None], 2)[..., 0]
    x, y = idx % w, idx // w

    def at(xx, yy):
        return np.take_along_axis(flat, (np.clip(yy, 0, h - 1) * w + np.clip(xx, 0, w - 1))[..., None], 2)[..., 0]

    dx = np.where((x > 0) & (x < w - 1), np.sign(at(x + 1, y) - at(x - 1, y)), 0) * 0.25
    dy = np.where((y > 0) & (y < h - 1), np.sign(at(x, y + 1) - at(x, y - 1)), 0) * 0.25
    coords = np.stack([x + dx, y + dy], axis=-1).astype(np.float32)  # (N, K, 2)
    return coords, maxvals


def heatmap_to_image(coords, center, scale, heatmap_size):
    """Heatmap coords (N, K, 2) -> image coords (N, K, 2) for crops with rotation 0.

    Equals affine_points(coords[n], get_affine_transform(center[n], scale[n], 0, heatmap_size,
    inv=True)): x_img = x_hm * scale_w / w + center_x - scale_w / 2 (same for y).
    """
    center = np.asarray(center, dtype=np.float64).reshape(-1, 1, 2)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1, 1, 2)
    size = np.asarray(heatmap_size, dtype=np.float64)
    return np.asarray(coords, dtype=np.float64) * scale / size + center - scale / 2


def derive_flip_pairs(keypoint_names):
    """Pairs (i, j) of names that differ only in a 'left'/'right' word, e.g. left_eye/right_eye."""
    def key(name):
        words = re.split(r"[_\s\-]+", name.lower())
        return tuple("<side>" if w in ("left", "right") else w for w in words), words

    index = {}
    for i, name in enumerate(keypoint_names):
        k, words = key(name)
        if "left" in words or "right" in words:
            index.setdefault(k, []).append(i)
    return sorted(tuple(sorted(v)) for v in index.values() if len(v) == 2)


def half_body_box(keypoints, labeled, upper_ids, lower_ids, aspect_ratio, rng):
    """Half-body augmentation: center, scale of the upper or lower body (fair coin), or None.

    Uses the labeled keypoints of the chosen half (the other half if the chosen one has <= 2),
    box = their extent filled to the aspect ratio and padded x1.5, center = their mean.
    """
    upper = [i for i in upper_ids if labeled[i]]
    lower = [i for i in lower_ids if labeled[i]]
    chosen = upper if (rng.random() < 0.5 and len(upper) > 2) else (lower if len(lower) > 2 else upper)
    if len(chosen) < 2:
        return None
    pts = keypoints[chosen, :2]
    w, h = pts.max(0) - pts.min(0)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return pts.mean(0), np.array([w, h]) * HALF_BODY_PADDING


# ---------------------------------------------------------------- files

def load_coco_json(path):
    """Read a COCO json with errors that name the file (and line, for malformed json)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed json at line {e.lineno} column {e.colno}: {e.msg}") from e
    lists = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in lists):
        raise ValueError(f"{path}: not a COCO file (needs lists 'images', 'annotations', 'categories')")
    return data


def jpeg_is_truncated(data):
    """True when JPEG bytes have no end-of-image marker (FFD9) after the last start-of-scan (FFDA).

    libjpeg decodes such files with a warning and grey fill; FFDA/FFD9 cannot occur inside
    entropy-coded data, and EXIF thumbnails sit before the main scan.
    """
    sos = data.rfind(b"\xff\xda")
    return sos < 0 or data.find(b"\xff\xd9", sos) < 0


def read_image(path, reduce=1, context=""):
    """Decode an image file -> (uint8 BGR (H, W, 3), reduction used).

    Grey, RGBA (alpha dropped), palette and 16-bit images are converted to 8-bit colour.
    reduce in (1, 2, 4, 8) decodes a JPEG at 1/reduce size with libjpeg's DCT scaling (other
    formats always decode at full size); reduced pixel x covers original pixels
    [r x, r x + r - 1], so its centre is r x + (r - 1) / 2. EXIF orientation is ignored:
    annotations refer to the stored pixels (the caller checks the size against the json).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FileNotFoundError(f"cannot read image {path}{context}: {e}") from e
    is_jpeg = data[:2] == b"\xff\xd8"
    if is_jpeg and jpeg_is_truncated(data):
        raise ValueError(f"truncated JPEG {path}{context}")
    reduce = reduce if is_jpeg else 1
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}[reduce]
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError(f"cannot decode image {path}{context} ({len(data)} bytes)")
    return image, reduce


def _labeled_count(ann):
    return int((np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)[:, 2] > 0).sum())


def usable_instance(ann, image):
    """Why an annotation cannot be used for top-down training, or None if it can.

    Crowd regions and instances with no labeled keypoint are ignored by COCOeval too; a box
    with no area inside the image (after clipping) cannot be cropped.
    """
    if not ann.get("keypoints"):
        return "no keypoints"
    if ann.get("iscrowd", 0):
        return "crowd"
    if _labeled_count(ann) == 0:
        return "no labeled keypoint"
    x, y, w, h = ann["bbox"]
    if min(x + w, image["width"]) - max(x, 0) <= 0 or min(y + h, image["height"]) - max(y, 0) <= 0:
        return "zero-area box"
    return None


def sample_few_shot(coco, shots, seed):
    """Few-shot split (Table 2): `shots` images per species (category_id), sorted image ids.

    Candidates for a species are the images holding at least one usable instance of it;
    species c draws with np.random.default_rng([seed, c]) so a species' choice does not depend
    on the others. Species with fewer candidates keep all of them.
    """
    chosen = set()
    for cat_id in sorted(coco.getCatIds()):
        candidates = sorted({a["image_id"] for a in coco.loadAnns(coco.getAnnIds(catIds=[cat_id]))
                             if usable_instance(a, coco.imgs[a["image_id"]]) is None})
        rng = np.random.default_rng([seed, cat_id])
        take = min(shots, len(candidates))
        chosen.update(int(candidates[i]) for i in rng.choice(len(candidates), take, replace=False))
    return sorted(chosen)


# ---------------------------------------------------------------- dataset

class KeypointDataset(Dataset):
    """Top-down instances of a COCO-format keypoint file, one ground-truth box per sample.

    Training skips crowd instances and instances without a labeled keypoint and applies
    flip, half-body, scale and rotation augmentation in one bilinear warp; evaluation keeps
    every instance COCOeval scores (not crowd, num_keypoints > 0) and applies none.
    Boxes are clipped to the image; boxes with no area are skipped and counted.
    Errors name the json / image file and the annotation id. `skip_summary` is one line.
    """

    def __init__(self, ann_file, image_dir, train, image_size=(256, 256), heatmap_size=(64, 64),
                 sigma=2.0, mean=CLIP_MEAN, std=CLIP_STD, few_shot=None, few_shot_seed=0, sigmas=None):
        self.ann_file, self.image_dir, self.train = ann_file, image_dir, train
        self.image_size, self.heatmap_size, self.sigma = tuple(image_size), tuple(heatmap_size), sigma
        self.aspect_ratio = image_size[0] / image_size[1]
        self._scale = (1.0 / (np.array(std) * 255)).astype(np.float32)    # RGB: (x / 255 - mean) / std
        self._offset = (np.array(mean) / np.array(std)).astype(np.float32)
        data = load_coco_json(ann_file)
        self._read_categories(data, sigmas)
        self._check(data)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
            self.coco.createIndex()
        self.few_shot_image_ids = sample_few_shot(self.coco, few_shot, few_shot_seed) if few_shot else None
        self._build_records()
        self._rng, self._rng_key = None, None

    def _read_categories(self, data, sigmas):
        cats = [c for c in data["categories"] if c.get("keypoints")]
        if not cats:
            raise ValueError(f"{self.ann_file}: no category lists 'keypoints'; not a keypoint file")
        names = list(cats[0]["keypoints"])
        for c in cats[1:]:
            if list(c["keypoints"]) != names:
                raise ValueError(f"{self.ann_file}: categories {cats[0]['id']} and {c['id']} list "
                                 "different keypoints; one model needs one keypoint set")
        self.keypoint_names, self.num_keypoints = names, len(names)
        self.keypoint_category_ids = {c["id"] for c in cats}
        self.skeleton = [[int(a) - 1, int(b) - 1] for a, b in cats[0].get("skeleton", [])]  # 0-based
        if names == AP10K_KEYPOINTS:
            known = (AP10K_FLIP_PAIRS, AP10K_SIGMAS, AP10K_UPPER_BODY, AP10K_LOWER_BODY)
        elif names == COCO_KEYPOINTS:
            known = (COCO_FLIP_PAIRS, COCO_SIGMAS, COCO_UPPER_BODY, COCO_LOWER_BODY)
        else:  # unknown dataset: pairs from names, no half-body (upper/lower body unknown)
            known = (derive_flip_pairs(names), None, None, None)
        self.flip_pairs, known_sigmas, self.upper_body_ids, self.lower_body_ids = known
        if sigmas is not None:
            self.sigmas = np.asarray(sigmas, dtype=np.float64)
            if self.sigmas.shape != (self.num_keypoints,):
                raise ValueError(f"sigmas has shape {self.sigmas.shape}, {self.ann_file} has "
                                 f"{self.num_keypoints} keypoints")
        elif known_sigmas is not None:
            self.sigmas = known_sigmas.copy()
        else:
            self.sigmas = np.full(self.num_keypoints, DEFAULT_SIGMA)
            warnings.warn(f"{self.ann_file}: unknown keypoint set, using OKS sigma {DEFAULT_SIGMA} for "
                          "every keypoint; pass sigmas= for meaningful AP")
        self._flip_perm = flip_permutation(self.num_keypoints, self.flip_pairs)

    def _check(self, data):
        """Structure checks that pycocotools would silently get wrong."""
        f = self.ann_file
        for kind in ("images", "annotations"):
            counts = Counter(item["id"] for item in data[kind])
            dup = sorted(i for i, n in counts.items() if n > 1)
            if dup:
                raise ValueError(f"{f}: duplicate {kind[:-1]} id(s) {dup[:10]}")
        images = {im["id"]: im for im in data["images"]}
        for im in data["images"]:
            if "width" not in im or "height" not in im or "file_name" not in im:
                raise ValueError(f"{f}: image id {im['id']} needs file_name, width and height")
        cat_ids = {c["id"] for c in data["categories"]}
        for ann in data["annotations"]:
            where = f"{f}: annotation id {ann['id']}"
            if ann.get("image_id") not in images:
                raise ValueError(f"{where} refers to unknown image id {ann.get('image_id')}")
            if ann.get("category_id") not in cat_ids:
                raise ValueError(f"{where} refers to unknown category id {ann.get('category_id')}")
            if ann["category_id"] not in self.keypoint_category_ids:
                continue
            n = len(ann.get("keypoints", []))
            if n != 3 * self.num_keypoints:
                raise ValueError(f"{where} has {n} keypoint values, expected {3 * self.num_keypoints} "
                                 f"({self.num_keypoints} keypoints x [x, y, v])")
            if len(ann.get("bbox", [])) != 4:
                raise ValueError(f"{where} has no 4-number bbox")

    def _build_records(self):
        skipped, clipped, missing = Counter(), 0, {}
        keep_images = set(self.few_shot_image_ids) if self.few_shot_image_ids is not None else None
        self.records = []
        for ann_id in sorted(self.coco.anns):
            ann = self.coco.anns[ann_id]
            image = self.coco.imgs[ann["image_id"]]
            if ann["category_id"] not in self.keypoint_category_ids:
                skipped["category without keypoints"] += 1
                continue
            if keep_images is not None and ann["image_id"] not in keep_images:
                continue
            reason = usable_instance(ann, image)
            if reason is None and not self.train and ann.get("num_keypoints", 1) == 0:
                reason = "num_keypoints field is 0"  # COCOeval ignores by the field, not the array
            if reason is not None:
                skipped[reason] += 1
                continue
            x, y, w, h = [float(v) for v in ann["bbox"]]
            x1, y1 = max(x, 0.0), max(y, 0.0)
            x2, y2 = min(x + w, float(image["width"])), min(y + h, float(image["height"]))
            clipped += (x1, y1, x2, y2) != (x, y, x + w, y + h)
            box = [x1, y1, x2 - x1, y2 - y1]
            center, scale = box_to_center_scale(box, self.aspect_ratio)
            path = os.path.join(self.image_dir, image["file_name"])
            if not os.path.exists(path):
                missing.setdefault(path, []).append(ann_id)
            self.records.append(dict(
                path=path, image_id=int(ann["image_id"]), ann_id=int(ann_id),
                category_id=int(ann["category_id"]), image_width=int(image["width"]),
                image_height=int(image["height"]), box=np.array(box), center=center, scale=scale,
                keypoints=np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3),
                area=float(ann.get("area", box[2] * box[3]))))
        if missing:
            path, ids = next(iter(missing.items()))
            raise FileNotFoundError(f"{self.ann_file}: {len(missing)} image file(s) missing, e.g. {path} "
                                    f"(annotation ids {ids[:5]})")
        why = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "none"
        self.skip_summary = (f"{os.path.basename(self.ann_file)} ({'train' if self.train else 'eval'}): "
                             f"{len(self.records)} instances kept, {sum(skipped.values())} skipped ({why}), "
                             f"{clipped} boxes clipped to the image"
                             + (f", few-shot {len(self.few_shot_image_ids)} images" if keep_images is not None else ""))

    def __len__(self):
        return len(self.records)

    def _get_rng(self):
        """numpy Generator seeded from torch's seed of this process (each DataLoader worker has
        its own: base_seed + worker_id), so torch.manual_seed makes a run reproducible."""
        key = torch.initial_seed()
        if self._rng_key != key:
            if get_worker_info() is not None:
                cv2.setNumThreads(0)  # workers are the parallelism; no OpenCV thread pool each
            self._rng, self._rng_key = np.random.default_rng(key), key
        return self._rng

    def random_augmentation(self, rec, rng):
        """Training augmentation parameters (center, scale, rot_deg, flip) for one record."""
        center, scale = rec["center"], rec["scale"]
        labeled = rec["keypoints"][:, 2] > 0
        if (self.upper_body_ids is not None and labeled.sum() > HALF_BODY_MIN_KEYPOINTS
                and rng.random() < HALF_BODY_PROB):
            half = half_body_box(rec["keypoints"], labeled, self.upper_body_ids, self.lower_body_ids,
                                 self.aspect_ratio, rng)
            if half is not None:
                center, scale = half
        scale = scale * np.clip(rng.normal(1.0, SCALE_SIGMA), 1 - SCALE_SIGMA, 1 + SCALE_SIGMA)
        rot = 0.0
        if rng.random() < ROT_PROB:
            rot = float(np.clip(rng.normal(0.0, ROT_SIGMA), -2 * ROT_SIGMA, 2 * ROT_SIGMA))
        return center, scale, rot, bool(rng.random() < FLIP_PROB)

    def __getitem__(self, index):
        rec = self.records[index]
        if self.train:
            return self.make_sample(index, *self.random_augmentation(rec, self._get_rng()))
        return self.make_sample(index)

    def make_sample(self, index, center=None, scale=None, rot_deg=0.0, flip=False):
        """One sample with explicit augmentation (defaults: the record's box, no rotation/flip).

        flip mirrors the crop (x_in -> W - 1 - x_in) and swaps left/right keypoints; it is
        folded into the single warp. JPEGs are decoded at 1/2, 1/4 or 1/8 resolution when the
        crop still gets at least one source pixel per output pixel.
        """
        rec = self.records[index]
        center = rec["center"] if center is None else np.asarray(center, dtype=np.float64)
        scale = rec["scale"] if scale is None else np.asarray(scale, dtype=np.float64)
        W, H = self.image_size
        M = np.vstack([get_affine_transform(center, scale, rot_deg, self.image_size), [0, 0, 1]])
        if flip:
            M = np.array([[-1.0, 0, W - 1], [0, 1, 0], [0, 0, 1]]) @ M
        source_px_per_output_px = min(scale[0] / W, scale[1] / H)
        reduce = max([r for r in (1, 2, 4, 8) if r <= source_px_per_output_px] or [1])
        context = f" (annotation id {rec['ann_id']}, {self.ann_file})"
        source, reduce = read_image(rec["path"], reduce, context)
        expect = (-(-rec["image_height"] // reduce), -(-rec["image_width"] // reduce))  # ceil
        if source.shape[:2] != expect:
            raise ValueError(f"image {rec['path']} is {source.shape[1]}x{source.shape[0]} at 1/{reduce} "
                             f"but the json says {rec['image_width']}x{rec['image_height']}{context}")
        S = np.array([[reduce, 0, (reduce - 1) / 2], [0, reduce, (reduce - 1) / 2], [0, 0, 1.0]])  # reduced -> full px
        crop = cv2.warpAffine(source, (M @ S)[:2], (W, H), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        image = np.empty((3, H, W), np.float32)                   # (3, H, W) RGB, normalised
        for c, channel in enumerate(cv2.split(crop)[::-1]):        # BGR -> RGB, contiguous planes
            np.multiply(channel, self._scale[c], out=image[c])
            image[c] -= self._offset[c]
        kps = rec["keypoints"]
        xy, labeled = affine_points(kps[:, :2], M[:2]), kps[:, 2] > 0
        if flip:
            xy, labeled = xy[self._flip_perm], labeled[self._flip_perm]
        stride = np.array([W / self.heatmap_size[0], H / self.heatmap_size[1]])
        xy_hm = np.where(labeled[:, None], xy / stride, 0.0).astype(np.float32)
        target, weight = encode_heatmaps(xy_hm, labeled, self.heatmap_size, self.sigma)
        return {
            "image": image,                                            # (3, H, W) float32
            "target": target,                                          # (K, h, w)
            "target_weight": weight,                                   # (K,)
            "keypoints": xy_hm,                                        # (K, 2) heatmap px; 0 where unlabeled
            "image_id": rec["image_id"], "ann_id": rec["ann_id"], "category_id": rec["category_id"],
            "center": center.astype(np.float32), "scale": scale.astype(np.float32),
            "area": np.float32(rec["area"]), "bbox_score": np.float32(1.0),
        }
