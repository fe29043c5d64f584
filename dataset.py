"""Top-down keypoint data (paper Sec. 4.1): a COCO-format json -> records -> crops + heatmaps.

One dataset class for any COCO-format keypoint file (AP-10K, COCO person, your own data): the
json is read and checked in one pass, each usable instance becomes a record (an image and a
box: ground truth, or a detection for evaluation), the AP-10K few-shot split (Table 2) keeps
`shots` images per species, and `transforms.TopDownTransform` makes each sample.

The json (COCO keypoint format): `images` [{id, file_name, width, height}], `annotations`
[{id, image_id, category_id, bbox [x, y, w, h], keypoints [x1, y1, v1, ...] (v 0 unlabeled,
1 occluded, 2 visible), optional area (default w * h), iscrowd (default 0), num_keypoints
(default: the labeled count)}], `categories` [{id, name, keypoints [names], skeleton
(1-based pairs)}]. Optional category fields: `keypoint_prompts` (one text per keypoint, Eq. 2),
`flip_pairs` (0-based index pairs or name pairs), `sigmas` (one OKS sigma per keypoint).
"""
import contextlib
import io
import os
import warnings
from collections import Counter

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset, get_worker_info

from files import read_json
from keypoints import check_flip_pairs, check_sigmas, keypoint_metadata
from transforms import NORMALIZATION, TopDownTransform, box_to_center_scale


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


def clip_box(bbox, width, height):
    """COCO box [x, y, w, h] clipped to a width x height image (w or h <= 0: nothing left)."""
    x, y, w, h = [float(v) for v in bbox]
    x1, y1 = max(x, 0.0), max(y, 0.0)
    return [x1, y1, min(x + w, float(width)) - x1, min(y + h, float(height)) - y1]


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
    _, _, w, h = clip_box(ann["bbox"], image["width"], image["height"])
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
        box = clip_box(ann["bbox"], image["width"], image["height"])
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
        box = clip_box(det["bbox"], image["width"], image["height"])
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
