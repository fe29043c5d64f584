"""Top-down keypoint data for PromptPose (paper Sec. 4.1): COCO-format json -> crops + heatmaps.

One dataset class for any COCO-format keypoint file (AP-10K, COCO person, your own data),
the AP-10K few-shot split (Table 2), detected boxes for evaluation, and the geometry that
evaluation reuses. The file reads top to bottom as the pipeline runs:

1. known keypoint sets and the recipe's constants (AP-10K, COCO; augmentation; normalisation);
2. geometry, pure numpy: box -> centre/scale, affine, flip, heatmap encode/decode;
3. left/right flip pairs: from the names, the json or a flag;
4. records: json -> validated records (training / evaluation / detections, few-shot);
5. the per-sample transform: box jitter, half-body, scale, rotation, flip, one warp, targets;
6. `KeypointDataset`, which joins 4 and 5, and the DataLoader settings.

Size convention: every `image_size` / `heatmap_size` / `output_size` here is (H, W), height
first, as in the model's config. Points, centres and scales are (x, y) / (w, h) vectors.

Coordinate conventions (used by every function below):
- Image pixel (i, j) has its centre at (x, y) = (i, j); a horizontal flip maps x -> width - 1 - x.
- A box is COCO [x, y, w, h]; its center is (x + w/2, y + h/2); `scale` is the (w, h) in image
  pixels of the padded, aspect-ratio-filled box that is warped onto the network input.
- The affine maps `center` to (W/2, H/2) of the output and `scale` onto (W, H) (SimpleBaseline).
- Heatmap coordinates: x_hm = x_in / stride with stride = input / heatmap size (4); heatmap
  pixel i has its centre at i and covers [i - 0.5, i + 0.5].

The json (COCO keypoint format): `images` [{id, file_name, width, height}], `annotations`
[{id, image_id, category_id, bbox [x, y, w, h], keypoints [x1, y1, v1, ...] (v 0 unlabeled,
1 occluded, 2 visible), optional area (default w * h), iscrowd (default 0), num_keypoints
(default: the labeled count)}], `categories` [{id, name, keypoints [names], skeleton
(1-based pairs)}]. Optional category fields: `keypoint_prompts` (one text per keypoint, Eq. 2),
`flip_pairs` (0-based index pairs or name pairs), `sigmas` (one OKS sigma per keypoint).
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
from torch.utils.data import DataLoader, Dataset, get_worker_info

from model import default_prompt_texts

# ---------------------------------------------------------------- known keypoint sets

AP10K_KEYPOINTS = [
    "left_eye", "right_eye", "nose", "neck", "root_of_tail",
    "left_shoulder", "left_elbow", "left_front_paw", "right_shoulder", "right_elbow",
    "right_front_paw", "left_hip", "left_knee", "left_back_paw", "right_hip", "right_knee",
    "right_back_paw"]
# The authors' prompt words (their `class_names`): the names with '_' -> ' ', but 'tail root'.
AP10K_PROMPTS = [
    "left eye", "right eye", "nose", "neck", "tail root",
    "left shoulder", "left elbow", "left front paw", "right shoulder", "right elbow",
    "right front paw", "left hip", "left knee", "left back paw", "right hip", "right knee",
    "right back paw"]
AP10K_FLIP_PAIRS = [(0, 1), (5, 8), (6, 9), (7, 10), (11, 14), (12, 15), (13, 16)]
AP10K_SIGMAS = np.array([.025, .025, .026, .035, .035, .079, .072, .062, .079, .072, .062,
                         .107, .087, .089, .107, .087, .089])
# Half-body groups of AP-10K's published meta-information, as the authors ran them. R_F_Paw
# (right_front_paw, index 10) is in the LOWER body there although L_F_Paw (7) is upper --
# probably a typo upstream, kept so that training matches the published numbers.
AP10K_UPPER_BODY = [0, 1, 2, 3, 5, 6, 7, 8, 9]
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

# What a dataset with exactly these keypoint names gets unless the json or the caller says
# otherwise (prompts None: the names with '_' -> ' ').
KNOWN_KEYPOINT_SETS = [
    dict(names=AP10K_KEYPOINTS, prompts=AP10K_PROMPTS, flip_pairs=AP10K_FLIP_PAIRS,
         sigmas=AP10K_SIGMAS, upper_body=AP10K_UPPER_BODY),
    dict(names=COCO_KEYPOINTS, prompts=None, flip_pairs=COCO_FLIP_PAIRS,
         sigmas=COCO_SIGMAS, upper_body=COCO_UPPER_BODY),
]
DEFAULT_SIGMA = 0.05  # OKS sigma for keypoints of an unknown dataset when none are given

# Input normalisation, (mean, std) of RGB in 0..1. The authors normalise every backbone with
# ImageNet's, CLIP ones included; "clip" is CLIP's own.
NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}

# Training augmentation and targets (SimpleBaseline / mmpose AP-10K settings, the authors').
BOX_PADDING = 1.25            # box -> crop: filled to the input aspect ratio, then x1.25
BOX_JITTER_PROB = 0.3         # training box centre moves with probability 0.3 ...
BOX_JITTER = 0.4              # ... by 0.4 * (U(0, 1) - 0.5) * (w, h): up to +-0.2 w / h
FLIP_PROB = 0.5
HALF_BODY_PROB = 0.3
HALF_BODY_MIN_KEYPOINTS = 8   # half-body only when MORE than this many keypoints are labeled
HALF_BODY_PADDING = 1.5
SCALE_SIGMA = 0.5             # scale factor ~ N(1, 0.5) clipped to [0.5, 1.5]
ROT_SIGMA = 40.0              # rotation ~ N(0, 40) deg clipped to [-80, 80] ...
ROT_PROB = 0.6                # ... applied with probability 0.6
TARGET_SIGMA = 2.0            # Gaussian target sigma in heatmap pixels


# ---------------------------------------------------------------- geometry (pure numpy)

def box_to_center_scale(box, aspect_ratio, padding=BOX_PADDING):
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

    The output, of size output_size = (H, W), shows the box of size `scale` (w, h) around
    `center`, rotated by `rot_deg` counter-clockwise as displayed (as cv2.getRotationMatrix2D):
        out = S R (p - center) + (W/2, H/2),   S = diag(W / scale_w, H / scale_h).
    """
    H, W = output_size
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


def flip_back_heatmaps(heatmaps, flip_pairs, shift=True):
    """Flip test: heatmaps (N, K, h, w) predicted on mirrored crops -> the unmirrored frame.

    Mirrors along w and swaps left/right channels. Mirroring the 256-wide input maps x_in to
    255 - x_in, i.e. heatmap x to 63.75 - x, while mirroring the heatmap maps x to 63 - x:
    the flipped-back map sits (stride - 1) / stride = 0.75 px left of the truth. shift=True
    moves it one pixel right (the SimpleBaseline correction; column 0 keeps its value).
    """
    perm = flip_permutation(heatmaps.shape[1], flip_pairs)
    out = np.ascontiguousarray(heatmaps[..., ::-1][:, perm])
    if shift:
        out[..., 1:] = out[..., :-1].copy()
    return out


def encode_heatmaps(keypoints_hm, labeled, heatmap_size, sigma=TARGET_SIGMA):
    """Gaussian targets (mmpose's TopDownGenerateTarget, MSRA): keypoints (K, 2) in heatmap
    pixels -> target (K, h, w) float32, weight (K,) float32; heatmap_size = (h, w).

    The centre is rounded to the nearest heatmap pixel, mu = floor(x + 0.5), and
        target_k(x, y) = exp(-((x - mu_x)^2 + (y - mu_y)^2) / (2 sigma^2))
    inside the (2r + 1)^2 window |x - mu_x| <= r, |y - mu_y| <= r, r = int(3 sigma) (13 x 13
    for sigma 2), 0 outside it (peak 1, unnormalised). weight_k = 0 (and target 0) for
    unlabeled keypoints and when the window misses the heatmap entirely; a window partly
    inside keeps weight 1. Differences from mmpose, both only for keypoints more than half a
    pixel left of / above the heatmap: mmpose's int(x + 0.5) truncates toward zero (centre
    one pixel further right / down), and its test `br < 0` keeps weight 1 (with an all-zero
    target) for a window that ends exactly one pixel before column / row 0.
    """
    h, w = heatmap_size
    mu = np.floor(np.asarray(keypoints_hm, dtype=np.float64) + 0.5).astype(np.int64)  # (K, 2)
    r = int(3 * sigma)
    reaches = ((mu[:, 0] + r >= 0) & (mu[:, 0] - r <= w - 1)
               & (mu[:, 1] + r >= 0) & (mu[:, 1] - r <= h - 1))
    weight = (np.asarray(labeled) > 0) & reaches                                   # (K,)
    dx = (np.arange(w)[None] - mu[:, :1]).astype(np.float32)                       # (K, w)
    dy = (np.arange(h)[None] - mu[:, 1:]).astype(np.float32)                       # (K, h)
    gx = np.where(np.abs(dx) <= r, np.exp(-dx ** 2 / np.float32(2 * sigma ** 2)), 0)
    gy = np.where(np.abs(dy) <= r, np.exp(-dy ** 2 / np.float32(2 * sigma ** 2)), 0)
    target = gy[:, :, None] * gx[:, None, :] * weight[:, None, None]               # (K, h, w)
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
        pos = np.clip(yy, 0, h - 1) * w + np.clip(xx, 0, w - 1)
        return np.take_along_axis(flat, pos[..., None], 2)[..., 0]

    dx = np.where((x > 0) & (x < w - 1), np.sign(at(x + 1, y) - at(x - 1, y)), 0) * 0.25
    dy = np.where((y > 0) & (y < h - 1), np.sign(at(x, y + 1) - at(x, y - 1)), 0) * 0.25
    coords = np.stack([x + dx, y + dy], axis=-1).astype(np.float32)  # (N, K, 2)
    return coords, maxvals


def heatmap_to_image(coords, center, scale, heatmap_size):
    """Heatmap coords (N, K, 2) -> image coords (N, K, 2) for crops with rotation 0.

    heatmap_size = (h, w). Equals affine_points(coords[n], get_affine_transform(center[n],
    scale[n], 0, heatmap_size, inv=True)): x_img = x_hm * scale_w / w + center_x - scale_w / 2.
    """
    center = np.asarray(center, dtype=np.float64).reshape(-1, 1, 2)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1, 1, 2)
    size = np.array([heatmap_size[1], heatmap_size[0]], dtype=np.float64)  # (w, h)
    return np.asarray(coords, dtype=np.float64) * scale / size + center - scale / 2


# ---------------------------------------------------------------- left/right flip pairs

# A name is cut into words at separators, lower->upper case changes and letter<->digit
# changes: "forelegL1" -> foreleg L 1, "L_EarBase" -> L Ear Base, "Lip" -> Lip.
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+|[^\W\d_]+")
_SIDE = {"left": "<L>", "right": "<R>", "l": "<L>", "r": "<R>"}
_MIRROR = {"<L>": "<R>", "<R>": "<L>"}
PAIRS_HELP = ('give the pairs in the json category ("flip_pairs": [[i, j], ...], 0-based '
              'indices or names; [] if no name is sided), or with --flip-pairs "i,j;k,l", or '
              'turn flipping off with --no-flip')


def side_key(name):
    """A keypoint name -> (words with side markers '<L>'/'<R>', how sure: 'word', 'inside' or None).

    'word': a whole word left/right/L/R in any case ("L_Eye", "eyeR", "forelegL1",
    "Eye_Left") or a word starting with left/right ("leftear"). 'inside': left/right inside a
    word ("frontleftpaw", "earright"; also "bright", hence only paired, never an error).
    Near/Off (Horse-10: nearer / farther from the camera) are not sides: a flip keeps them.
    """
    words, sure = [], None
    for word in _WORD.findall(name):
        low = word.lower()
        start = re.fullmatch(r"(left|right)([a-z]+)", low)
        if low in _SIDE:
            words, sure = words + [_SIDE[low]], "word"
        elif start:
            words, sure = words + [_SIDE[start[1]], start[2]], "word"
        else:
            words.append(low)
    if sure:
        return tuple(words), sure
    inside = [_SIDE.get(p, p) for w in words for p in re.split(r"(left|right)", w) if p]
    if any(p in _MIRROR for p in inside):
        return tuple(inside), "inside"
    return tuple(words), None


def derive_flip_pairs(keypoint_names, require_partners=True):
    """Left/right pairs (i, j), i < j, sorted: names that are each other's mirror by side_key.

    require_partners: a name with a whole-word side ('word') and no partner raises ValueError (its
    flip would teach the wrong side); otherwise such names stay unpaired.
    """
    keys = [side_key(n) for n in keypoint_names]
    index = {}
    for i, (key, sure) in enumerate(keys):
        if sure and key in index:
            raise ValueError(f"keypoint names {keypoint_names[index[key]]!r} and "
                             f"{keypoint_names[i]!r} read as the same name; rename one")
        if sure:
            index[key] = i
    pairs, unpaired = [], []
    for i, (key, sure) in enumerate(keys):
        j = index.get(tuple(_MIRROR.get(t, t) for t in key)) if sure else None
        if j is not None and i < j:
            pairs.append((i, j))
        elif j is None and sure == "word":
            unpaired.append(keypoint_names[i])
    if unpaired and require_partners:
        raise ValueError(f"keypoint name(s) {unpaired} look left/right-sided but have no "
                         f"partner on the other side; {PAIRS_HELP}")
    return sorted(pairs)


def check_flip_pairs(pairs, keypoint_names, where):
    """Validate pairs of 0-based indices or names (compared after trimming whitespace) ->
    sorted [(i, j)] with i < j; ValueError naming `where` (a file and field, or a flag)."""
    names = [n.strip() for n in keypoint_names]
    out, used = [], set()
    if not isinstance(pairs, (list, tuple)):
        raise ValueError(f"{where}: flip pairs must be a list of [i, j] pairs, got {pairs!r}")
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"{where}: each flip pair needs exactly two keypoints, got {pair!r}")
        ids = []
        for v in pair:
            if isinstance(v, str) and v.strip() in names:
                ids.append(names.index(v.strip()))
            elif isinstance(v, (int, np.integer)) and not isinstance(v, bool) \
                    and 0 <= v < len(names):
                ids.append(int(v))
            else:
                raise ValueError(f"{where}: {v!r} is neither a keypoint name nor a 0-based index "
                                 f"0..{len(names) - 1}; the keypoints are {list(keypoint_names)}")
        if ids[0] == ids[1] or used & set(ids):
            raise ValueError(f"{where}: pair {pair!r} repeats a keypoint (each keypoint may be in "
                             "one pair, with another keypoint)")
        used |= set(ids)
        out.append(tuple(sorted(ids)))
    return sorted(out)


def parse_flip_pairs(spec, keypoint_names):
    """The value of `--flip-pairs`, "a,b;c,d", each a keypoint name or a 0-based index
    (an all-digit item is an index), -> sorted [(i, j)]. "" gives no pairs."""
    pairs = []
    for item in spec.split(";"):
        if item.strip():
            parts = [p.strip() for p in item.split(",")]
            pairs.append([int(p) if p.isdigit() else p for p in parts])
    return check_flip_pairs(pairs, keypoint_names, "--flip-pairs")


# ---------------------------------------------------------------- the json: reading and validation

def read_json(path, what="file"):
    """json.load with errors that name the file (and the line, for malformed json)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed json at line {e.lineno} column {e.colno}: {e.msg}") from e
    except OSError as e:
        raise FileNotFoundError(f"cannot read {what} {path}: {e.strerror}") from e


def load_coco_json(path):
    """Read a COCO json with errors that name the file (and line, for malformed json)."""
    data = read_json(path)
    lists = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in lists):
        raise ValueError(f"{path}: not a COCO file (needs lists 'images', 'annotations', 'categories')")
    return data


def finite_numbers(values, count, where, field):
    """`values` must be a list of `count` finite numbers (int/float, not strings) -> float64
    array; else one ValueError line naming `where` and the field."""
    if not isinstance(values, list) or len(values) != count:
        got = f"{len(values)} values" if isinstance(values, list) else repr(values)
        raise ValueError(f"{where}: '{field}' must be a list of {count} numbers, got {got}")
    if not set(map(type, values)) <= {int, float}:
        i = next(i for i, v in enumerate(values) if type(v) not in (int, float))
        raise ValueError(f"{where}: '{field}'[{i}] is {values[i]!r}, not a number")
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        i = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ValueError(f"{where}: '{field}'[{i}] is {values[i]}, not a finite number")
    return array


def finite_number(value, where, field, minimum=None):
    """One finite number (>= minimum if given) or a ValueError naming `where` and the field."""
    if type(value) not in (int, float) or not np.isfinite(value):
        raise ValueError(f"{where}: '{field}' is {value!r}, not a finite number")
    if minimum is not None and value < minimum:
        raise ValueError(f"{where}: '{field}' is {value}, must be >= {minimum}")
    return float(value)


def integer_id(item, key, where):
    """item[key] as an integer id, or a ValueError naming `where` (missing, or not an integer)."""
    if key not in item:
        raise ValueError(f"{where} has no '{key}'")
    if type(item[key]) is not int:
        raise ValueError(f"{where}: '{key}' is {item[key]!r}, not an integer")
    return item[key]


def check_images(data, path):
    """Image entries: integer unique ids, file_name, finite width/height >= 0 (0: instances skipped)."""
    for n, im in enumerate(data["images"]):
        if not isinstance(im, dict):
            raise ValueError(f"{path}: image #{n} is not an object")
        where = f"{path}: image id {integer_id(im, 'id', f'{path}: image #{n}')}"
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise ValueError(f"{where} needs a 'file_name'")
        for field in ("width", "height"):
            finite_number(im.get(field), where, field, minimum=0)
    ids = Counter(im["id"] for im in data["images"])
    dup = sorted(i for i, n in ids.items() if n > 1)
    if dup:
        raise ValueError(f"{path}: duplicate image id(s) {dup[:10]}")


def check_annotations(data, path, keypoint_category_ids, num_keypoints):
    """Annotations: integer unique ids, known image/category; for keypoint categories 3K finite
    keypoint numbers, a 4-number finite bbox, finite area >= 0. Fills what COCOeval needs and
    the file may leave out: area (= bbox w * h), iscrowd (0), num_keypoints (labeled count)."""
    images = {im["id"] for im in data["images"]}
    categories = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    for n, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise ValueError(f"{path}: annotation #{n} is not an object")
        ann_id = integer_id(ann, "id", f"{path}: annotation #{n} (image id {ann.get('image_id')!r})")
        where = f"{path}: annotation id {ann_id}"
        if ann.get("image_id") not in images:
            raise ValueError(f"{where} refers to unknown image id {ann.get('image_id')!r}")
        if ann.get("category_id") not in categories:
            raise ValueError(f"{where} refers to unknown category id {ann.get('category_id')!r}")
        if ann["category_id"] not in keypoint_category_ids:
            continue
        kps = ann.get("keypoints")
        if not isinstance(kps, list) or len(kps) != 3 * num_keypoints:
            n_values = len(kps) if isinstance(kps, list) else 0
            raise ValueError(f"{where} has {n_values} keypoint values, expected {3 * num_keypoints} "
                             f"({num_keypoints} keypoints x [x, y, v])")
        labeled = int((finite_numbers(kps, len(kps), where, "keypoints")[2::3] > 0).sum())
        if not isinstance(ann.get("bbox"), list) or len(ann["bbox"]) != 4:
            raise ValueError(f"{where} has no 4-number bbox [x, y, w, h]")
        x, y, w, h = finite_numbers(ann["bbox"], 4, where, "bbox")
        ann["area"] = finite_number(ann.get("area", float(w * h)), where, "area", minimum=0)
        ann.setdefault("iscrowd", 0)
        finite_number(ann["iscrowd"], where, "iscrowd")
        ann.setdefault("num_keypoints", labeled)
        finite_number(ann["num_keypoints"], where, "num_keypoints", minimum=0)
    ids = Counter(ann["id"] for ann in data["annotations"])
    dup = sorted(i for i, n in ids.items() if n > 1)
    if dup:
        raise ValueError(f"{path}: duplicate annotation id(s) {dup[:10]}")


def category_field(cats, field, path):
    """An optional per-category field: None, or the value all keypoint categories giving it agree on."""
    given = [c for c in cats if field in c]
    for c in given[1:]:
        if c[field] != given[0][field]:
            raise ValueError(f"{path}: categories {given[0]['id']} and {c['id']} give different "
                             f"'{field}'; one model needs one value")
    return given[0][field] if given else None


def check_sigmas(sigmas, num_keypoints, where):
    """OKS sigmas -> float64 (K,): K finite positive numbers, else ValueError naming `where`."""
    if isinstance(sigmas, str):
        sigmas = [s for s in sigmas.split(",") if s.strip()]
    try:
        array = np.asarray(sigmas, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: sigmas must be {num_keypoints} numbers, got {sigmas!r}") from None
    if array.shape != (num_keypoints,):
        raise ValueError(f"{where}: sigmas has shape {array.shape}, the data has {num_keypoints} "
                         "keypoints (one sigma per keypoint)")
    if not (np.isfinite(array).all() and (array > 0).all()):
        raise ValueError(f"{where}: sigmas must be finite and > 0, got {array.tolist()}")
    return array


def read_keypoint_set(data, path):
    """The categories' keypoint set -> dict(names, category_ids, skeleton (0-based pairs), and the
    optional json fields keypoint_prompts, flip_pairs, sigmas, validated; None when absent)."""
    cats = [c for c in data["categories"] if isinstance(c, dict) and c.get("keypoints")]
    if not cats:
        raise ValueError(f"{path}: no category lists 'keypoints'; not a keypoint file")
    for c in cats:
        integer_id(c, "id", f"{path}: category {c.get('name', '?')!r}")
    names = cats[0]["keypoints"]
    for c in cats[1:]:
        if c["keypoints"] != names:
            raise ValueError(f"{path}: categories {cats[0]['id']} and {c['id']} list "
                             "different keypoints; one model needs one keypoint set")
    if not all(isinstance(n, str) and n.strip() for n in names) or len(set(names)) != len(names):
        raise ValueError(f"{path}: category {cats[0]['id']} 'keypoints' must be distinct non-empty "
                         f"names, got {names}")
    K = len(names)
    skeleton = cats[0].get("skeleton") or []
    for pair in skeleton:
        if not (isinstance(pair, list) and len(pair) == 2 and all(type(v) is int and 1 <= v <= K
                                                                  for v in pair)):
            raise ValueError(f"{path}: skeleton pair {pair!r} is not two keypoint indices in "
                             f"1..{K} (COCO skeletons are 1-based)")
    prompts = category_field(cats, "keypoint_prompts", path)
    if prompts is not None and not (isinstance(prompts, list) and len(prompts) == K and all(
            isinstance(p, str) and p.strip() for p in prompts)):
        raise ValueError(f"{path}: 'keypoint_prompts' must be {K} non-empty strings, one per keypoint")
    pairs = category_field(cats, "flip_pairs", path)
    sigmas = category_field(cats, "sigmas", path)
    return dict(
        names=list(names), category_ids={c["id"] for c in cats},
        skeleton=[[a - 1, b - 1] for a, b in skeleton],
        prompts=[p.strip() for p in prompts] if prompts is not None else None,
        flip_pairs=None if pairs is None else check_flip_pairs(pairs, names, f"{path}: 'flip_pairs'"),
        sigmas=None if sigmas is None else check_sigmas(
            finite_numbers(sigmas, K, f"{path}: category {cats[0]['id']}", "sigmas"), K, path))


def prompt_texts_for(keypoint_names, keypoint_prompts=None):
    """The text of each keypoint for its prompt (Eq. 2): the json's `keypoint_prompts` if
    given, the authors' words for AP-10K ('tail root' for root_of_tail), else the names with
    '_' -> ' '."""
    if keypoint_prompts is not None:
        return list(keypoint_prompts)
    known = next((s for s in KNOWN_KEYPOINT_SETS if s["names"] == list(keypoint_names)), {})
    return list(known.get("prompts") or default_prompt_texts(keypoint_names))


def keypoint_metadata(keypoint_set, path, sigmas=None, flip_pairs=None, flip=True):
    """prompt texts, flip pairs, OKS sigmas and the upper body for a keypoint set.

    Each comes from (first that applies): the caller's argument, the json's category field,
    the known set (AP-10K, COCO) with exactly these names, else the default: prompts = names
    with '_' -> ' ', pairs derived from the names (an error when a side has no partner,
    unless flip is False), sigma 0.05 with a warning. No half-body for unknown sets.
    """
    names = keypoint_set["names"]
    known = next((s for s in KNOWN_KEYPOINT_SETS if s["names"] == names), {})
    prompts = prompt_texts_for(names, keypoint_set["prompts"])
    if isinstance(flip_pairs, str):
        pairs = parse_flip_pairs(flip_pairs, names)
    elif flip_pairs is not None:
        pairs = check_flip_pairs(flip_pairs, names, "flip_pairs")
    elif keypoint_set["flip_pairs"] is not None:
        pairs = keypoint_set["flip_pairs"]
    elif known:
        pairs = list(known["flip_pairs"])
    else:
        try:
            pairs = derive_flip_pairs(names, require_partners=flip)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    if sigmas is not None:
        sigmas = check_sigmas(sigmas, len(names), path)
    elif keypoint_set["sigmas"] is not None:
        sigmas = keypoint_set["sigmas"]
    elif known:
        sigmas = known["sigmas"].copy()
    else:
        sigmas = np.full(len(names), DEFAULT_SIGMA)
        warnings.warn(f"{path}: unknown keypoint set, using OKS sigma {DEFAULT_SIGMA} for every "
                      "keypoint; give 'sigmas' in the json category or --sigmas for meaningful AP")
    return dict(prompt_texts=prompts, flip_pairs=pairs, sigmas=sigmas,
                upper_body=known.get("upper_body"))


def load_detections(path, coco, score_threshold=0.0):
    """Detected boxes for evaluation: a COCO detection-results json [{"image_id",
    "category_id", "bbox", "score"}, ...] -> the entries with score >= score_threshold.

    coco: the keypoint ground truth (a pycocotools COCO, e.g. KeypointDataset.coco, or the
    path of its json). A detection for an image not in it is an error. Categories: with one
    keypoint category (COCO person) every detection becomes that category (filter a
    multi-class detector's file to its person/animal class first); with several (AP-10K
    species) a detection must name one of them.
    """
    data = load_coco_json(coco) if isinstance(coco, str) else coco.dataset
    dets = read_json(path, "detections")
    if not isinstance(dets, list):
        raise ValueError(f'{path}: expected a list of detections [{{"image_id", "category_id", '
                         '"bbox", "score"}, ...] (COCO detection results)')
    images = {im.get("id") for im in data["images"] if isinstance(im, dict)}
    keypoint_cats = sorted(c.get("id") for c in data["categories"] if isinstance(c, dict) and c.get("keypoints"))
    out, seen = [], set()
    for n, det in enumerate(dets):
        where = f"{path}: detection #{n}"
        det = check_detection(det, where, images)
        seen.add(det["category_id"])
        if len(keypoint_cats) == 1:
            det["category_id"] = keypoint_cats[0]
        elif det["category_id"] not in keypoint_cats:
            raise ValueError(f"{where}: category_id {det['category_id']} is not a keypoint "
                             f"category of the ground truth ({keypoint_cats})")
        if det["score"] >= score_threshold:
            out.append(det)
    if len(keypoint_cats) == 1 and len(seen) > 1:
        warnings.warn(f"{path}: detections of {len(seen)} categories {sorted(seen)[:10]} are all "
                      f"taken as keypoint category {keypoint_cats[0]}")
    return out


def check_detection(det, where, images):
    """One detection -> a clean dict, or ValueError naming `where` and the field."""
    if not isinstance(det, dict):
        raise ValueError(f"{where} is not an object")
    for key in ("image_id", "category_id"):
        integer_id(det, key, where)
    if det["image_id"] not in images:
        raise ValueError(f"{where}: image id {det['image_id']} is not in the ground-truth json")
    bbox = finite_numbers(det.get("bbox"), 4, where, "bbox")
    score = finite_number(det.get("score"), where, "score")
    return {"image_id": det["image_id"], "category_id": det["category_id"],
            "bbox": bbox.tolist(), "score": score}


# ---------------------------------------------------------------- records

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
        raise FileNotFoundError(f"cannot read image {path}{context}: {e.strerror}") from e
    if not data:
        raise ValueError(f"image file {path} is empty (0 bytes){context}")
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


def clip_box(bbox, image):
    """COCO box [x, y, w, h] clipped to the image -> [x, y, w, h] (w or h <= 0: nothing left)."""
    x, y, w, h = [float(v) for v in bbox]
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w, float(image["width"])), min(y + h, float(image["height"]))
    return [x1, y1, x2 - x1, y2 - y1]


def skip_reason(ann, image, keypoint_category_ids, train):
    """Why an annotation gives no sample, or None. COCOeval ignores crowd instances and
    `num_keypoints` 0 by itself; the other reasons make an instance unpredictable."""
    if ann["category_id"] not in keypoint_category_ids:
        return "category without keypoints"
    if ann["iscrowd"]:
        return "crowd"
    if image["width"] <= 0 or image["height"] <= 0:
        return "image size 0"
    if not (np.asarray(ann["keypoints"][2::3]) > 0).any():
        return "no labeled keypoint"
    _, _, w, h = clip_box(ann["bbox"], image)
    if w <= 0 or h <= 0:
        return "zero-area box"
    if not train and ann["num_keypoints"] == 0:
        return "num_keypoints field is 0"   # COCOeval ignores by the field, not the array
    return None


def scored_by_cocoeval(ann, keypoint_category_ids):
    """True if COCOeval would count this ground truth (a miss when nothing predicts it)."""
    return (ann["category_id"] in keypoint_category_ids and not ann["iscrowd"]
            and ann["num_keypoints"] > 0)


def make_record(image, image_dir, box, aspect_ratio, **fields):
    """One sample's record: the image, the clipped box (read by the box jitter), centre, scale."""
    return dict(path=os.path.join(image_dir, image["file_name"]), image_id=int(image["id"]),
                image_width=int(image["width"]), image_height=int(image["height"]),
                box=np.array(box), **dict(zip(("center", "scale"),
                                              box_to_center_scale(box, aspect_ratio))), **fields)


def ground_truth_records(coco, image_dir, keypoint_category_ids, num_keypoints, aspect_ratio,
                         train, keep_images=None):
    """One record per usable annotation (sorted by id) -> (records, skipped Counter, boxes
    clipped, ids of unpredictable annotations COCOeval would score)."""
    records, skipped, clipped, unpredictable = [], Counter(), 0, []
    for ann_id in sorted(coco.anns):
        ann = coco.anns[ann_id]
        if keep_images is not None and ann["image_id"] not in keep_images:
            continue
        image = coco.imgs[ann["image_id"]]
        reason = skip_reason(ann, image, keypoint_category_ids, train)
        if reason is not None:
            skipped[reason] += 1
            if scored_by_cocoeval(ann, keypoint_category_ids):
                unpredictable.append(ann_id)
            continue
        box = clip_box(ann["bbox"], image)
        clipped += box != [float(v) for v in ann["bbox"]]
        keypoints = np.asarray(ann["keypoints"], dtype=np.float64).reshape(num_keypoints, 3)
        records.append(make_record(image, image_dir, box, aspect_ratio, ann_id=int(ann_id),
                                   category_id=int(ann["category_id"]), keypoints=keypoints,
                                   bbox_score=1.0))
    return records, skipped, clipped, unpredictable


def detection_records(boxes, coco, image_dir, keypoint_category_ids, num_keypoints, aspect_ratio):
    """One evaluation record per detection (ann_id -1, bbox_score = its score) -> (records,
    skipped Counter, boxes clipped). Detections must name a keypoint category (load_detections
    maps them)."""
    records, skipped, clipped = [], Counter(), 0
    for n, det in enumerate(boxes):
        det = check_detection(det, f"boxes[{n}]", coco.imgs)
        if det["category_id"] not in keypoint_category_ids:
            raise ValueError(f"boxes[{n}]: category_id {det['category_id']} is not a keypoint "
                             f"category {sorted(keypoint_category_ids)} (see load_detections)")
        image = coco.imgs[det["image_id"]]
        box = clip_box(det["bbox"], image)
        if image["width"] <= 0 or image["height"] <= 0 or box[2] <= 0 or box[3] <= 0:
            skipped["detection with no area in the image"] += 1
            continue
        clipped += box != det["bbox"]
        records.append(make_record(image, image_dir, box, aspect_ratio, ann_id=-1,
                                   category_id=det["category_id"], bbox_score=det["score"],
                                   keypoints=np.zeros((num_keypoints, 3))))
    return records, skipped, clipped


def check_image_files(records, ann_file):
    """Every record's image file exists and is not empty, else one error naming a file."""
    missing, empty = {}, {}
    sizes = {}
    for rec in records:
        if rec["path"] not in sizes:
            sizes[rec["path"]] = os.path.getsize(rec["path"]) if os.path.isfile(rec["path"]) else None
        size = sizes[rec["path"]]
        if size is None or size == 0:
            (missing if size is None else empty).setdefault(rec["path"], []).append(rec["ann_id"])
    if missing:
        path, ids = next(iter(missing.items()))
        raise FileNotFoundError(f"{ann_file}: {len(missing)} image file(s) missing, e.g. {path} "
                                f"(annotation ids {ids[:5]})")
    if empty:
        path, ids = next(iter(empty.items()))
        raise ValueError(f"{ann_file}: image file {path} is empty (0 bytes) (annotation ids "
                         f"{ids[:5]}); {len(empty)} empty file(s) in all")


def index_coco(data):
    """A pycocotools COCO over an already-read (and validated) json dict."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


def sample_few_shot(coco, shots, seed, keypoint_category_ids=None):
    """Few-shot split (Table 2): `shots` images per species (category_id), sorted image ids.

    Candidates for a species are the images holding at least one usable instance of it;
    species c draws with np.random.default_rng([seed, c]) so a species' choice does not depend
    on the others. Species with fewer candidates keep all of them.
    """
    if keypoint_category_ids is None:
        keypoint_category_ids = {c["id"] for c in coco.dataset["categories"] if c.get("keypoints")}
    chosen = set()
    for cat_id in sorted(keypoint_category_ids):
        candidates = sorted({a["image_id"] for a in coco.loadAnns(coco.getAnnIds(catIds=[cat_id]))
                             if skip_reason(a, coco.imgs[a["image_id"]], keypoint_category_ids,
                                            train=True) is None})
        rng = np.random.default_rng([seed, cat_id])
        take = min(shots, len(candidates))
        chosen.update(int(candidates[i]) for i in rng.choice(len(candidates), take, replace=False))
    return sorted(chosen)


def skip_line(name, mode, kept, skipped, clipped, removed=0, few_shot=None, unit="instances"):
    """The one-line skip summary (printed by the entry points)."""
    why = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "none"
    line = (f"{name} ({mode}): {kept} {unit} kept, {sum(skipped.values())} skipped ({why}), "
            f"{clipped} boxes clipped to the image")
    if removed:
        line += f"; {removed} of them removed from the scored ground truth (unpredictable)"
    if few_shot is not None:
        line += f", few-shot {few_shot} images"
    return line


# ---------------------------------------------------------------- per-sample transform

def jitter_box_center(center, box_wh, rng):
    """Training box jitter (the authors' `_xywh2cs`): with probability 0.3 the centre moves by
    0.4 * (u - 0.5) * (w, h) of the box, u ~ U(0, 1) per axis, i.e. up to +-0.2 of its width /
    height; the scale stays. Drawn here for every sample; the authors draw it once when the
    annotations are loaded, so there each instance keeps one jittered box for all epochs."""
    if rng.random() < BOX_JITTER_PROB:
        return center + BOX_JITTER * (rng.random(2) - 0.5) * np.asarray(box_wh, dtype=np.float64)
    return center


def half_body_box(keypoints, labeled, upper_ids, aspect_ratio, rng):
    """Half-body augmentation: center, scale of the upper or lower body (fair coin), or None.

    Upper body: the labeled keypoints in upper_ids; lower body: every other labeled keypoint
    (mmpose's rule). Uses the chosen half (the other one if the chosen has <= 2 points);
    box = their extent filled to the aspect ratio and padded x1.5, center = their mean.
    """
    upper = [i for i in range(len(labeled)) if labeled[i] and i in upper_ids]
    lower = [i for i in range(len(labeled)) if labeled[i] and i not in upper_ids]
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


class TopDownTransform:
    """Record -> network input and targets: one bilinear warp of the (augmented) box onto the
    (H, W) input, normalisation, and Gaussian targets at the (h, w) heatmap."""

    def __init__(self, image_size, heatmap_size, normalize, flip_pairs, upper_body, flip):
        if normalize not in NORMALIZATION:
            raise ValueError(f"normalize must be one of {sorted(NORMALIZATION)}, got {normalize!r}")
        for name, size in (("image_size", image_size), ("heatmap_size", heatmap_size)):
            if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
                raise ValueError(f"{name} must be (H, W), two positive integers, got {size!r}")
        self.image_size = tuple(int(v) for v in image_size)       # (H, W)
        self.heatmap_size = tuple(int(v) for v in heatmap_size)   # (h, w)
        self.aspect_ratio = self.image_size[1] / self.image_size[0]   # W / H
        mean, std = NORMALIZATION[normalize]
        self._scale = (1.0 / (np.array(std) * 255)).astype(np.float32)  # RGB: (x / 255 - mean) / std
        self._offset = (np.array(mean) / np.array(std)).astype(np.float32)
        self.flip_pairs, self.upper_body, self.flip = flip_pairs, upper_body, flip

    def random_augmentation(self, rec, rng):
        """Training augmentation (center, scale, rot_deg, flip) for one record, in mmpose's order:
        box jitter, half-body, scale, rotation, flip."""
        center, scale = jitter_box_center(rec["center"], rec["box"][2:], rng), rec["scale"]
        labeled = rec["keypoints"][:, 2] > 0
        if (self.upper_body is not None and labeled.sum() > HALF_BODY_MIN_KEYPOINTS
                and rng.random() < HALF_BODY_PROB):
            half = half_body_box(rec["keypoints"], labeled, self.upper_body, self.aspect_ratio, rng)
            if half is not None:
                center, scale = half
        scale = scale * np.clip(rng.normal(1.0, SCALE_SIGMA), 1 - SCALE_SIGMA, 1 + SCALE_SIGMA)
        rot = 0.0
        if rng.random() < ROT_PROB:
            rot = float(np.clip(rng.normal(0.0, ROT_SIGMA), -2 * ROT_SIGMA, 2 * ROT_SIGMA))
        return center, scale, rot, bool(rng.random() < FLIP_PROB) and self.flip

    def warp_image(self, rec, M, scale, context):
        """The record's image through the (3, 3) affine M -> (3, H, W) normalised RGB float32.

        JPEGs are decoded at 1/2, 1/4 or 1/8 resolution when the crop still gets at least one
        source pixel per output pixel."""
        H, W = self.image_size
        reduce = max([r for r in (1, 2, 4, 8) if r <= min(scale[0] / W, scale[1] / H)] or [1])
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
        return image

    def __call__(self, rec, center=None, scale=None, rot_deg=0.0, flip=False, context=""):
        """One sample with explicit augmentation (defaults: the record's box, no rotation/flip).

        flip mirrors the crop (x_in -> W - 1 - x_in) and swaps left/right keypoints; it is
        folded into the single warp."""
        center = rec["center"] if center is None else np.asarray(center, dtype=np.float64)
        scale = rec["scale"] if scale is None else np.asarray(scale, dtype=np.float64)
        (H, W), (h, w) = self.image_size, self.heatmap_size
        M = np.vstack([get_affine_transform(center, scale, rot_deg, self.image_size), [0, 0, 1]])
        if flip:
            M = np.array([[-1.0, 0, W - 1], [0, 1, 0], [0, 0, 1]]) @ M
        image = self.warp_image(rec, M, scale, context)
        kps = rec["keypoints"]
        xy, labeled = affine_points(kps[:, :2], M[:2]), kps[:, 2] > 0
        if flip:
            perm = flip_permutation(len(kps), self.flip_pairs)
            xy, labeled = xy[perm], labeled[perm]
        xy_hm = np.where(labeled[:, None], xy / np.array([W / w, H / h]), 0.0).astype(np.float32)
        target, weight = encode_heatmaps(xy_hm, labeled, self.heatmap_size)
        return {
            "image": image,                                            # (3, H, W) float32
            "target": target,                                          # (K, h, w)
            "target_weight": weight,                                   # (K,)
            "keypoints": xy_hm,                                        # (K, 2) heatmap px; 0 where unlabeled
            "image_id": rec["image_id"], "ann_id": rec["ann_id"], "category_id": rec["category_id"],
            "center": center.astype(np.float32), "scale": scale.astype(np.float32),
            "bbox_score": np.float32(rec["bbox_score"]),
        }


# ---------------------------------------------------------------- dataset

class KeypointDataset(Dataset):
    """Top-down instances of a COCO-format keypoint file: one sample per ground-truth box
    (training, evaluation) or per detected box (evaluation with `boxes`).

    Training skips crowd instances, instances without a labeled keypoint, boxes with no area
    inside the image and images of size 0, and applies box jitter, half-body, scale, rotation
    and flip augmentation in one bilinear warp (flip=False: no flip). Evaluation keeps every
    instance COCOeval scores and applies none. Every ground-truth instance that COCOeval
    would score but that cannot be predicted (box with no area inside the image, image size
    0, no labeled keypoint while num_keypoints > 0) is removed from `coco` as well as from the
    records, so a perfect model scores AP 1.0; crowd instances and num_keypoints 0 stay in
    `coco` (COCOeval ignores them), annotations of categories without keypoints are removed.
    `skip_summary` (one line) counts every case. Errors name the json / image file and the
    annotation id.

    image_size, heatmap_size: (H, W). normalize: a key of NORMALIZATION. sigmas, flip_pairs
    (a list of index or name pairs, or a --flip-pairs string): override the json / known set
    (see keypoint_metadata). few_shot: images per species (training only). boxes: detections
    [{"image_id", "category_id", "bbox", "score"}] already filtered by score (evaluation only).
    """

    def __init__(self, ann_file, image_dir, train, image_size=(256, 256), heatmap_size=(64, 64),
                 normalize="imagenet", few_shot=None, few_shot_seed=0, sigmas=None,
                 flip_pairs=None, flip=True, boxes=None):
        if few_shot is not None and (not train or type(few_shot) is not int or few_shot < 1):
            raise ValueError(f"few_shot must be a positive number of images per species, for "
                             f"training only; got {few_shot!r} (train={train})")
        if boxes is not None and train:
            raise ValueError("boxes (detections) are for evaluation only")
        self.ann_file, self.image_dir = os.path.abspath(ann_file), os.path.abspath(image_dir)
        self.train, self.normalize, self.flip = train, normalize, flip
        data = load_coco_json(self.ann_file)                       # json -> validated records
        keypoint_set = read_keypoint_set(data, self.ann_file)
        check_images(data, self.ann_file)
        check_annotations(data, self.ann_file, keypoint_set["category_ids"], len(keypoint_set["names"]))
        self._set_keypoint_set(keypoint_set, sigmas, flip_pairs, flip)
        self.transform = TopDownTransform(image_size, heatmap_size, normalize, self.flip_pairs,
                                          self.upper_body_ids, flip)   # record -> sample
        self.image_size, self.heatmap_size = self.transform.image_size, self.transform.heatmap_size
        self.mean, self.std = NORMALIZATION[normalize]
        self.coco = index_coco(data)
        self.few_shot_image_ids = (sample_few_shot(self.coco, few_shot, few_shot_seed,
                                                   self.keypoint_category_ids) if few_shot else None)
        self._build_records(boxes)
        self._rng, self._rng_key = None, None

    def _set_keypoint_set(self, keypoint_set, sigmas, flip_pairs, flip):
        """Names, skeleton, prompt texts, flip pairs, OKS sigmas, half-body groups (keypoint_metadata)."""
        self.keypoint_names = keypoint_set["names"]
        self.num_keypoints = len(self.keypoint_names)
        self.keypoint_category_ids = keypoint_set["category_ids"]
        self.skeleton = keypoint_set["skeleton"]                      # 0-based pairs
        meta = keypoint_metadata(keypoint_set, self.ann_file, sigmas, flip_pairs, flip)
        self.prompt_texts, self._flip_pairs = meta["prompt_texts"], meta["flip_pairs"]
        self.sigmas, self.upper_body_ids = meta["sigmas"], meta["upper_body"]

    def _build_records(self, boxes):
        name = os.path.basename(self.ann_file)
        args = (self.coco, self.image_dir, self.keypoint_category_ids, self.num_keypoints,
                self.transform.aspect_ratio)
        keep = set(self.few_shot_image_ids) if self.few_shot_image_ids is not None else None
        records, skipped, clipped, unpredictable = ground_truth_records(*args, self.train, keep)
        removed = sorted(set(unpredictable) | {a["id"] for a in self.coco.dataset["annotations"]
                                               if a["category_id"] not in self.keypoint_category_ids})
        if removed and not self.train:   # the scored ground truth = what can be predicted
            drop = set(removed)
            self.coco = index_coco(dict(self.coco.dataset, annotations=[
                a for a in self.coco.dataset["annotations"] if a["id"] not in drop]))
        mode = "train" if self.train else "eval"
        self.skip_summary = skip_line(name, mode, len(records), skipped, clipped,
                                      len(removed) if not self.train else 0,
                                      len(keep) if keep is not None else None)
        if boxes is not None:
            records, det_skipped, det_clipped = detection_records(boxes, *args)
            self.skip_summary += "; " + skip_line(f"{len(boxes)} detections", "eval", len(records),
                                                  det_skipped, det_clipped, unit="boxes")
        if not records:
            raise ValueError(f"{self.ann_file}: no usable {'training' if self.train else 'evaluation'} "
                             f"instance ({self.skip_summary})")
        check_image_files(records, self.ann_file)
        self.records = records

    @property
    def flip_pairs(self):
        """Left/right pairs (i, j) of keypoint indices, i < j (swapped by the flip)."""
        return self._flip_pairs

    @flip_pairs.setter
    def flip_pairs(self, pairs):
        self._flip_pairs = check_flip_pairs(pairs, self.keypoint_names, "flip_pairs")
        self.transform.flip_pairs = self._flip_pairs

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
        """Training augmentation (center, scale, rot_deg, flip) for one record."""
        return self.transform.random_augmentation(rec, rng)

    def make_sample(self, index, center=None, scale=None, rot_deg=0.0, flip=False):
        """Sample `index` with explicit augmentation (defaults: its box, no rotation or flip)."""
        rec = self.records[index]
        context = f" (annotation id {rec['ann_id']}, image id {rec['image_id']}, {self.ann_file})"
        return self.transform(rec, center, scale, rot_deg, flip, context)

    def __getitem__(self, index):
        if self.train:
            augmentation = self.random_augmentation(self.records[index], self._get_rng())
            return self.make_sample(index, *augmentation)
        return self.make_sample(index)


# ---------------------------------------------------------------- loaders

def default_workers(processes_per_node=1):
    """DataLoader workers per process: min(8, usable CPUs // processes per node), at least 0
    (the CPUs this process may run on, so a laptop or a CPU-limited job is not oversubscribed)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus // max(1, int(processes_per_node))))


def make_loader(dataset, batch_size, workers, shuffle, sampler=None, generator=None,
                drop_last=False, pin_memory=False):
    """DataLoader for a KeypointDataset (default collate). With a sampler (DistributedSampler)
    the sampler orders the data and `shuffle` must be False."""
    if sampler is not None and shuffle:
        raise ValueError("make_loader: give either shuffle=True or a sampler, not both")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                      num_workers=workers, generator=generator, drop_last=drop_last,
                      pin_memory=pin_memory)
