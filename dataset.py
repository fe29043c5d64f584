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

from files import finite_number, finite_numbers, integer_id, read_json
from keypoints import check_flip_pairs, check_sigmas, keypoint_metadata
from transforms import NORMALIZATION, TopDownTransform, box_to_center_scale


def load_coco_json(path):
    """Read a COCO json with errors that name the file (and line, for malformed json)."""
    data = read_json(path)
    lists = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in lists):
        raise ValueError(f"{path}: not a COCO file (needs lists 'images', 'annotations', 'categories')")
    return data


def unique_ids(items, kind, path):
    """Every image / annotation is an object with an integer id, and no id is repeated."""
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: {kind} #{n} is not an object")
        extra = f" (image id {item.get('image_id')!r})" if kind == "annotation" else ""
        integer_id(item, "id", f"{path}: {kind} #{n}{extra}")
    dup = sorted(i for i, n in Counter(item["id"] for item in items).items() if n > 1)
    if dup:
        raise ValueError(f"{path}: duplicate {kind} id(s) {dup[:10]}")


def check_coco(data, path, keypoint_category_ids, num_keypoints):
    """One pass over the images and annotations: unique integer ids; images with a file_name
    and finite width / height >= 0 (0: their instances are skipped); annotations of a known
    image and category, and for keypoint categories 3K finite keypoint numbers and a finite
    bbox. Fills what COCOeval reads where the file leaves it out: area (bbox w * h), iscrowd
    (0), num_keypoints (the labeled count). A scored instance with a box needs area > 0."""
    unique_ids(data["images"], "image", path)
    unique_ids(data["annotations"], "annotation", path)
    for im in data["images"]:
        where = f"{path}: image id {im['id']}"
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise ValueError(f"{where} needs a 'file_name'")
        for field in ("width", "height"):
            finite_number(im.get(field), where, field, minimum=0)
    images = {im["id"] for im in data["images"]}
    categories = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    for ann in data["annotations"]:
        where = f"{path}: annotation id {ann['id']}"
        for key, known in (("image_id", images), ("category_id", categories)):
            if ann.get(key) not in known:
                raise ValueError(f"{where} refers to unknown {key[:-3]} id {ann.get(key)!r}")
        if ann["category_id"] not in keypoint_category_ids:
            continue
        kps = ann.get("keypoints")
        if not isinstance(kps, list) or len(kps) != 3 * num_keypoints:
            raise ValueError(f"{where} has {len(kps) if isinstance(kps, list) else 0} keypoint values, "
                             f"expected {3 * num_keypoints} ({num_keypoints} keypoints x [x, y, v])")
        labeled = int((finite_numbers(kps, len(kps), where, "keypoints")[2::3] > 0).sum())
        if not isinstance(ann.get("bbox"), list) or len(ann["bbox"]) != 4:
            raise ValueError(f"{where} has no 4-number bbox [x, y, w, h]")
        x, y, w, h = finite_numbers(ann["bbox"], 4, where, "bbox")
        ann["area"] = finite_number(ann.get("area", float(w * h)), where, "area", minimum=0)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("num_keypoints", labeled)
        for field in ("iscrowd", "num_keypoints"):
            finite_number(ann[field], where, field, minimum=0)
        if ann["area"] == 0 < min(w, h) and ann["num_keypoints"] > 0 and not ann["iscrowd"]:
            raise ValueError(f"{where}: 'area' is 0, and OKS divides by it (AP 0 for this instance)"
                             f": give the instance's area, or leave 'area' out to use the box's w * h")


def read_skeleton(skeleton, num_keypoints, path):
    """The limbs (0-based pairs) of a category's skeleton, 1-based as COCO writes it. A
    0-based one (an index 0 and none above K - 1, as mmpose's Animal Kingdom file) is used as
    it is, and said; an unusable one is dropped with a warning: the skeleton only draws."""
    K, pairs = num_keypoints, skeleton or []
    valid = isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 and all(
        type(v) is int for v in p) for p in pairs)
    values = [v for p in pairs for v in p] if valid else []
    if valid and (not values or (min(values) >= 1 and max(values) <= K)):
        return [[a - 1, b - 1] for a, b in pairs]
    if valid and min(values) == 0 and max(values) <= K - 1:
        warnings.warn(f"{path}: the skeleton is 0-based (it uses index 0); read as such")
        return [list(p) for p in pairs]
    warnings.warn(f"{path}: skeleton {str(skeleton)[:80]} is not pairs of keypoint indices in "
                  f"1..{K} (COCO skeletons are 1-based); dropped (it only draws figures)")
    return []


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
    spaced = [n for n in names if n != n.strip()]
    if spaced:
        warnings.warn(f"{path}: keypoint name(s) {spaced} have surrounding spaces; stripped for "
                      "the prompts and the left/right pairs (the names stay as the file has them)")
    prompts = category_field(cats, "keypoint_prompts", path)
    if prompts is not None and not (isinstance(prompts, list) and len(prompts) == K and all(
            isinstance(p, str) and p.strip() for p in prompts)):
        raise ValueError(f"{path}: 'keypoint_prompts' must be {K} non-empty strings, one per keypoint")
    pairs = category_field(cats, "flip_pairs", path)
    sigmas = category_field(cats, "sigmas", path)
    return dict(
        names=list(names), category_ids={c["id"] for c in cats},
        skeleton=read_skeleton(cats[0].get("skeleton"), K, path),
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


def crosses_border(bbox, image):
    """Whether a box [x, y, w, h] reaches outside its image (and gets clipped)."""
    x, y, w, h = bbox
    return x < 0 or y < 0 or x + w > image["width"] or y + h > image["height"]


def instance_box(bbox, width, height):
    """The box a ground-truth instance is cropped from, as the authors' loaders make it
    (mmpose's COCO-style datasets, AP-10K's included): the far corner one pixel in, x2 = x + w - 1,
    clipped to the pixels [0, width - 1] (mmpose adds w - 1 to the clipped x1 instead, which
    shifts a box that starts left of the image; the two agree for every box inside it)."""
    x, y, w, h = [float(v) for v in bbox]
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w - 1, width - 1.0), min(y + h - 1, height - 1.0)
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
    _, _, w, h = instance_box(ann["bbox"], image["width"], image["height"])
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
        box = instance_box(ann["bbox"], image["width"], image["height"])
        clipped += crosses_border(ann["bbox"], image)
        keypoints = np.asarray(ann["keypoints"], dtype=np.float64).reshape(num_keypoints, 3)
        records.append(make_record(image, image_dir, box, aspect_ratio, ann_id=int(ann_id),
                                   category_id=int(ann["category_id"]), keypoints=keypoints,
                                   bbox_score=1.0, detection=False))
    return records, skipped, clipped, unpredictable


def detection_records(boxes, coco, image_dir, keypoint_category_ids, num_keypoints, aspect_ratio):
    """One evaluation record per detection (detection True, bbox_score = its score) -> (records,
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
        clipped += crosses_border(det["bbox"], image)
        records.append(make_record(image, image_dir, box, aspect_ratio, ann_id=-1,
                                   category_id=det["category_id"], bbox_score=det["score"],
                                   keypoints=np.zeros((num_keypoints, 3)), detection=True))
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
    (training, evaluation) or per detected box (evaluation with `boxes`: detections already
    filtered by score). Training skips crowd instances, instances without a labeled keypoint,
    boxes with no area in the image and images of size 0, and augments (flip=False: no flip).
    Evaluation keeps every instance COCOeval scores; one it would score but cannot be
    predicted is also removed from `coco`, so that ground truth in gives AP 1.0 out.
    `skip_summary` (one line) counts every case. image_size, heatmap_size: (H, W); sigmas,
    flip_pairs (pairs, or a --flip-pairs string) override the json / known set."""

    def __init__(self, ann_file, image_dir, train, image_size=(256, 256), heatmap_size=(64, 64),
                 normalize="imagenet", few_shot=None, few_shot_seed=0, sigmas=None,
                 flip_pairs=None, flip=True, boxes=None, reduced_decode=False):
        if few_shot is not None and (not train or type(few_shot) is not int or few_shot < 1):
            raise ValueError(f"few_shot must be a positive number of images per species, for "
                             f"training only; got {few_shot!r} (train={train})")
        if boxes is not None and train:
            raise ValueError("boxes (detections) are for evaluation only")
        self.ann_file, self.image_dir = os.path.abspath(ann_file), os.path.abspath(image_dir)
        self.train, self.normalize, self.flip = train, normalize, flip
        data = load_coco_json(self.ann_file)                       # json -> validated records
        keypoint_set = read_keypoint_set(data, self.ann_file)
        check_coco(data, self.ann_file, keypoint_set["category_ids"], len(keypoint_set["names"]))
        self._set_keypoint_set(keypoint_set, sigmas, flip_pairs, flip)
        self.transform = TopDownTransform(image_size, heatmap_size, normalize, self.flip_pairs,
                                          self.upper_body_ids, flip, reduced_decode)
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
        self.sigmas_given = meta["sigmas_given"]  # False: a placeholder; AP means little

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

    def make_sample(self, index, center=None, scale=None, rot_deg=0.0, flip=False):
        """Sample `index` with explicit augmentation (defaults: its box, no rotation or flip)."""
        rec = self.records[index]
        context = f" (annotation id {rec['ann_id']}, image id {rec['image_id']}, {self.ann_file})"
        return self.transform(rec, center, scale, rot_deg, flip, context)

    def __getitem__(self, index):
        if self.train:
            augmentation = self.transform.random_augmentation(self.records[index], self._get_rng())
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
