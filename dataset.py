"""Top-down keypoint data (paper Sec. 4.1): records -> crops + heatmaps.

Each usable instance of a COCO-format keypoint file (read and checked by annotations.py) becomes a
record: an image and a box, ground truth or a detection for evaluation. The AP-10K few-shot split
(Table 2) keeps `shots` images per species; `transforms.TopDownTransform` makes each sample;
`make_loader` batches them."""
import os
from collections import Counter

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from annotations import (check_coco, check_detection, clip_box, crosses_border, index_coco,
                         instance_box, load_coco_json, read_keypoint_set)
from keypoints import check_flip_pairs, keypoint_metadata
from transforms import NORMALIZATION, TopDownTransform, box_to_center_scale

# The network input a dataset makes when `inputs` does not say (the authors' AP-10K setting).
INPUTS = {"image_size": (256, 256), "heatmap_size": (64, 64), "normalize": "imagenet"}


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


def make_record(image, image_dir, box, aspect_ratio, **fields):
    """One sample's record: the image, the clipped box (read by the box jitter), centre, scale."""
    center, scale = box_to_center_scale(box, aspect_ratio)
    return dict(path=os.path.join(image_dir, image["file_name"]), image_id=int(image["id"]),
                image_width=int(image["width"]), image_height=int(image["height"]),
                box=np.array(box), center=center, scale=scale, **fields)


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
            if (ann["category_id"] in keypoint_category_ids and not ann["iscrowd"]
                    and ann["num_keypoints"] > 0):  # COCOeval scores it: a miss, never predicted
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
    skipped Counter, boxes clipped); it must name a keypoint category (load_detections maps it)."""
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
    ann_ids = {}   # path -> its records' annotation ids
    for rec in records:
        ann_ids.setdefault(rec["path"], []).append(rec["ann_id"])
    missing = {path: ids for path, ids in ann_ids.items() if not os.path.isfile(path)}
    if missing:
        path, ids = next(iter(missing.items()))
        raise FileNotFoundError(f"{ann_file}: {len(missing)} image file(s) missing, e.g. {path} "
                                f"(annotation ids {ids[:5]})")
    empty = {path: ids for path, ids in ann_ids.items() if os.path.getsize(path) == 0}
    if empty:
        path, ids = next(iter(empty.items()))
        raise ValueError(f"{ann_file}: image file {path} is empty (0 bytes) (annotation ids "
                         f"{ids[:5]}); {len(empty)} empty file(s) in all")


def sample_few_shot(coco, shots, seed, keypoint_category_ids=None):
    """Few-shot split (Table 2): `shots` images per species (category_id), sorted image ids. The
    candidates of a species are the images holding a usable instance of it; species c draws with
    np.random.default_rng([seed, c]) so that its choice does not depend on the others. Species
    with fewer candidates keep all of them."""
    if keypoint_category_ids is None:
        keypoint_category_ids = {c["id"] for c in coco.dataset["categories"] if c.get("keypoints")}
    chosen = set()
    for cat_id in sorted(keypoint_category_ids):
        candidates = sorted({a["image_id"] for a in coco.loadAnns(coco.getAnnIds(catIds=[cat_id]))
                             if skip_reason(a, coco.imgs[a["image_id"]], keypoint_category_ids,
                                            train=True) is None})
        rng = np.random.default_rng([seed, cat_id] if cat_id >= 0 else [seed, 2**32, -cat_id])
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
    `skip_summary` (one line) counts every case. inputs: the model's image_size, heatmap_size
    ((H, W) each) and normalize, e.g. its config (missing keys: INPUTS); few_shot: (images per
    species, seed) of the Table 2 split; sigmas, flip_pairs (pairs, or a --flip-pairs string)
    override the json / known set."""

    def __init__(self, ann_file, image_dir, train, inputs=None, few_shot=None, sigmas=None,
                 flip_pairs=None, flip=True, boxes=None, reduced_decode=False):
        shots = few_shot[0] if isinstance(few_shot, tuple) and len(few_shot) == 2 else None
        if few_shot is not None and not (train and type(shots) is int and shots >= 1):
            raise ValueError(f"few_shot must be (a positive number of images per species, seed), "
                             f"for training only; got {few_shot!r} (train={train})")
        if boxes is not None and train:
            raise ValueError("boxes (detections) are for evaluation only")
        inputs = {k: (inputs or {}).get(k, default) for k, default in INPUTS.items()}
        self.ann_file, self.image_dir = os.path.abspath(ann_file), os.path.abspath(image_dir)
        self.train, self.normalize, self.flip = train, inputs["normalize"], flip
        data = load_coco_json(self.ann_file)                       # json -> validated records
        keypoint_set = read_keypoint_set(data, self.ann_file)
        check_coco(data, self.ann_file, keypoint_set["category_ids"], len(keypoint_set["names"]))
        self.keypoint_names, self.num_keypoints = keypoint_set["names"], len(keypoint_set["names"])
        self.skeleton = keypoint_set["skeleton"]                      # 0-based pairs
        self.keypoint_category_ids = keypoint_set["category_ids"]
        meta = keypoint_metadata(keypoint_set, self.ann_file, sigmas, flip_pairs, flip)
        self.prompt_texts, self._flip_pairs = meta["prompt_texts"], meta["flip_pairs"]
        self.sigmas, self.upper_body_ids = meta["sigmas"], meta["upper_body"]
        self.sigmas_given = meta["sigmas_given"]  # False: a placeholder; AP means little
        self.transform = TopDownTransform(inputs["image_size"], inputs["heatmap_size"],
                                          self.normalize, self.flip_pairs, self.upper_body_ids,
                                          flip, reduced_decode)
        self.image_size, self.heatmap_size = self.transform.image_size, self.transform.heatmap_size
        self.mean, self.std = NORMALIZATION[self.normalize]
        self.coco = index_coco(data)
        self.few_shot_image_ids = (sample_few_shot(self.coco, *few_shot, self.keypoint_category_ids)
                                   if few_shot else None)
        self._build_records(boxes)
        self._rng, self._rng_key = None, None

    def _build_records(self, boxes):
        args = (self.coco, self.image_dir, self.keypoint_category_ids, self.num_keypoints,
                self.transform.aspect_ratio)
        keep = set(self.few_shot_image_ids) if self.few_shot_image_ids is not None else None
        records, skipped, clipped, unpredictable = ground_truth_records(*args, self.train, keep)
        removed = set(unpredictable) | {a["id"] for a in self.coco.dataset["annotations"]
                                        if a["category_id"] not in self.keypoint_category_ids}
        if removed and not self.train:   # the scored ground truth = what can be predicted
            self.coco = index_coco(dict(self.coco.dataset, annotations=[
                a for a in self.coco.dataset["annotations"] if a["id"] not in removed]))
        self.skip_summary = skip_line(
            os.path.basename(self.ann_file), "train" if self.train else "eval", len(records),
            skipped, clipped, 0 if self.train else len(removed),
            None if keep is None else len(keep))
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
