"""A trained model on crops, on your own photos and on videos (`python evaluate.py CKPT
--images ...` / `--video ...` run `run_photos` / `run_video` of this file).

Every box is cropped as in evaluation, predicted with the flip test and decoded with Eq. 1
(`transforms.keypoints_from_heatmaps`). Without --boxes the whole image / frame is the box.
"""
import itertools
import math
import os
import sys
from collections import defaultdict

import cv2
import numpy as np
import torch
from tqdm import tqdm

import visualize
from checkpoint import model_from_checkpoint
from dataset import clip_box, finite_number, finite_numbers, make_loader
from files import read_json, write_json
from keypoints import keypoint_sides
from model import autocast
from transforms import (TopDownTransform, box_to_center_scale, flip_back_heatmaps,
                        get_affine_transform, keypoints_from_heatmaps, read_image)

VIS_THRESHOLD = 0.2       # maxima above this count towards the instance score (mmpose vis_thr)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@torch.no_grad()
def predict_heatmaps(model, images, flip_pairs, flip, amp):
    """Heatmaps of a batch of crops (B, 3, H, W) -> numpy (B, K, h, w) float32; with the flip
    test averaged with the heatmaps of the mirrored crops, flipped back (pairs swapped, 1 px
    shift: transforms.flip_back_heatmaps)."""
    with autocast(images.device.type, amp):
        heatmaps = model(images)["heatmaps"].float().cpu().numpy()
        if flip:
            mirrored = model(images.flip(3))["heatmaps"].float().cpu().numpy()
            heatmaps = 0.5 * (heatmaps + flip_back_heatmaps(mirrored, flip_pairs))
    return heatmaps


def instance_scores(maxvals, box_scores):
    """mmpose's rescoring: box score x mean of the keypoint maxima above VIS_THRESHOLD (0 when
    none is). maxvals (B, K), box_scores (B,) -> (B,)."""
    above = maxvals > VIS_THRESHOLD
    mean = (maxvals * above).sum(1) / np.maximum(above.sum(1), 1)
    return np.asarray(box_scores, np.float64) * mean


def rounded_list(values):
    """An array (keypoints (K, 3), a centre (2,)) -> a flat list rounded to 1/1000 px, as
    COCO results store keypoints."""
    return [round(float(v), 3) for v in np.asarray(values).reshape(-1)]


def predict_batches(model, loader, flip_pairs, flip, amp, device, progress, desc):
    """Yield (batch, keypoints (B, K, 3), scores (B,)) for every batch of a crop loader."""
    model.eval()
    bar = tqdm(loader, desc=desc, leave=False, disable=not (progress and sys.stderr.isatty()))
    for batch in bar:
        images = batch["image"].to(device, non_blocking=True)
        heatmaps = predict_heatmaps(model, images, flip_pairs, flip, amp)
        keypoints = keypoints_from_heatmaps(heatmaps, batch["center"].numpy(), batch["scale"].numpy())
        yield batch, keypoints, instance_scores(keypoints[..., 2], batch["bbox_score"].numpy())


def prepare_model(ckpt, device, compile_model):
    """The checkpoint's model on `device`, channels_last (faster convolutions), eval mode."""
    model = model_from_checkpoint(ckpt).to(device, memory_format=torch.channels_last).eval()
    return torch.compile(model) if compile_model else model


def draw_context(ckpt, names_on):
    """What every overlay needs from the checkpoint: skeleton, sides, names (or None)."""
    names = ckpt["keypoint_names"]
    return {"skeleton": ckpt["skeleton"], "names": names if names_on else None,
            "sides": keypoint_sides(names, ckpt["flip_pairs"])}


class CropDataset(torch.utils.data.Dataset):
    """Crops of given boxes, cropped and normalised exactly as in evaluation. items: (source,
    bbox [x, y, w, h], score) with source an image path or a BGR array (a video frame)."""

    def __init__(self, items, image_size, normalize):
        self.items = items
        self.transform = TopDownTransform(image_size, [1, 1], normalize, [], None, flip=False)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        source, bbox, score = self.items[i]
        image = read_image(source)[0] if isinstance(source, str) else source
        H, W = self.transform.image_size
        center, scale = box_to_center_scale(bbox, W / H)
        M = np.vstack([get_affine_transform(center, scale, 0.0, (H, W)), [0, 0, 1]])
        return {"image": torch.from_numpy(self.transform.crop(image, M)),
                "center": torch.as_tensor(center, dtype=torch.float32),
                "scale": torch.as_tensor(scale, dtype=torch.float32),
                "bbox_score": torch.tensor(score, dtype=torch.float32)}


def predict_crops(model, items, ckpt, flip, amp, device, batch_size, workers, progress=False):
    """Keypoints (K, 3) and score of each (source, bbox, score) item, in order."""
    cfg = ckpt["model_config"]
    loader = make_loader(CropDataset(items, cfg["image_size"], cfg["normalize"]), batch_size,
                         workers, shuffle=False, pin_memory=device.type == "cuda")
    pairs = [tuple(p) for p in ckpt["flip_pairs"]]
    out = []
    for _, keypoints, scores in predict_batches(model, loader, pairs, flip, amp, device,
                                                progress, "photos"):
        out += [(k, float(s)) for k, s in zip(keypoints, scores)]
    return out


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


def list_images(paths):
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
    return files


def photo_boxes(path, photos):
    """--boxes for photos -> {photo index: [(bbox, score), ...]}. An entry's file_name may be
    the path as listed, its absolute path, or the bare file name when that is unambiguous."""
    lookup = defaultdict(set)
    for i, p in enumerate(photos):
        name = p["file_name"]
        for key in (name, os.path.abspath(name), os.path.basename(name)):
            lookup[key].add(i)
    boxes = defaultdict(list)
    for n, entry in enumerate(read_box_list(path)):
        name = entry.get("file_name")
        where = f"--boxes {path}, entry {n} ({name!r})"
        match = lookup.get(name, set()) if isinstance(name, str) else set()
        if len(match) != 1:
            raise ValueError(f"{where}: " + ("no such photo among --images" if not match else
                             "the name matches several photos; give the path as listed"))
        i = match.pop()
        boxes[i].append(check_box(entry, where, photos[i]["width"], photos[i]["height"]))
    return boxes


def overlay_names(photos):
    """vis/<stem>_pose.png, with the image id added where two photos share a stem."""
    stems = [os.path.splitext(os.path.basename(p["file_name"]))[0] for p in photos]
    repeated = {s for s in stems if stems.count(s) > 1}
    return [os.path.join("vis", f"{s}_{p['id']}_pose.png" if s in repeated else f"{s}_pose.png")
            for s, p in zip(stems, photos)]


def read_photos(paths):
    """The photos of --images -> [{"id", "file_name" (as listed), "width", "height"}]; each is
    decoded once here, so a truncated or unreadable file stops the run before any output."""
    photos = []
    for i, path in enumerate(list_images(paths)):
        image = read_image(path)[0]
        photos.append({"id": i + 1, "file_name": path, "width": image.shape[1],
                       "height": image.shape[0]})
    return photos


def photo_crops(photos, boxes):
    """The crops to predict: [(path, bbox, score)] and the photo index of each. With --boxes
    exactly the given boxes (a photo without one gets no pose), else each whole photo."""
    items, owner = [], []
    for i, p in enumerate(photos):
        whole = [([0.0, 0.0, float(p["width"]), float(p["height"])], 1.0)]
        for bbox, score in (boxes.get(i, []) if boxes is not None else whole):
            items.append((p["file_name"], bbox, score))
            owner.append(i)
    return items, owner


def coco_categories(ckpt):
    """The one category of own-photo results, naming the keypoints and the (1-based) skeleton."""
    return [{"id": 1, "name": "instance", "keypoints": list(ckpt["keypoint_names"]),
             "skeleton": [[a + 1, b + 1] for a, b in ckpt["skeleton"]]}]


def run_photos(model, ckpt, args, flip, device, out_dir):
    """Own photos -> photo_results.json (COCO keypoint results: image_id, file_name,
    category_id 1, bbox, flat keypoints, score), photo_images.json (COCO images + the category
    with the keypoint names: COCO(photo_images.json).loadRes(photo_results.json) works) and
    one overlay per photo in vis/."""
    photos = read_photos(args.images)
    boxes = photo_boxes(args.boxes, photos) if args.boxes else None
    items, owner = photo_crops(photos, boxes)
    predictions = predict_crops(model, items, ckpt, flip, args.amp, device, args.batch_size,
                                args.workers, progress=True)
    results = [{"image_id": photos[i]["id"], "file_name": photos[i]["file_name"],
                "category_id": 1, "bbox": item[1], "keypoints": rounded_list(keypoints),
                "score": score} for i, item, (keypoints, score) in zip(owner, items, predictions)]
    for p, name in zip(photos, overlay_names(photos)):
        p["overlay"] = name
    write_json(os.path.join(out_dir, "photo_results.json"), results)
    write_json(os.path.join(out_dir, "photo_images.json"),
               {"images": photos, "categories": coco_categories(ckpt)}, indent=1)
    write_photo_overlays(photos, results, out_dir, draw_context(ckpt, args.vis_names))
    without = len(photos) - len(set(owner))
    print(f"{len(results)} instances in {len(photos)} images"
          + (f" ({without} without a box in --boxes: no pose)" if without else "")
          + f" -> {os.path.join(out_dir, 'photo_results.json')} (COCO results; keypoint names "
            f"in photo_images.json), overlays in {os.path.join(out_dir, 'vis')}")


def write_photo_overlays(photos, results, out_dir, style):
    os.makedirs(os.path.join(out_dir, "vis"), exist_ok=True)
    for p in photos:
        poses = [np.reshape(r["keypoints"], (-1, 3)) for r in results if r["image_id"] == p["id"]]
        image = visualize.overlay(read_image(p["file_name"])[0], poses, style["skeleton"],
                                  style["sides"], VIS_THRESHOLD, names=style["names"])
        visualize.write_image(os.path.join(out_dir, p["overlay"]), image)


def open_video(path):
    """-> (capture, fps (30 when the file states none), width, height, frame count as the
    container states it (0: unknown))."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--video {path}: no such file")
    capture = cv2.VideoCapture(path)
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if not capture.isOpened() or width <= 0 or height <= 0:
        raise ValueError(f"--video {path}: OpenCV cannot decode this file (codec or format)")
    fps = capture.get(cv2.CAP_PROP_FPS)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    return capture, fps if math.isfinite(fps) and fps > 0 else 30.0, width, height, max(count, 0)


def video_boxes(path, width, height, count):
    """--boxes for a video: [{"frame": i (0-based), "bbox": [x, y, w, h], "score": s}, ...]
    -> {frame: [(bbox, score), ...]}; frames without an entry get no prediction."""
    boxes = defaultdict(list)
    for n, entry in enumerate(read_box_list(path)):
        frame = entry.get("frame")
        where = f"--boxes {path}, entry {n} (frame {frame!r})"
        if not (isinstance(frame, int) and not isinstance(frame, bool) and frame >= 0
                and (count == 0 or frame < count)):
            raise ValueError(f"{where}: 'frame' must be an integer in [0, {count or 'frames'})")
        boxes[frame].append(check_box(entry, where, width, height))
    return boxes


def frame_chunks(capture, size):
    """Lists of (index, frame) of at most `size` frames, in order."""
    chunk = []
    for index in itertools.count():
        ok, frame = capture.read()
        if not ok:
            break
        chunk.append((index, frame))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_frames(model, ckpt, chunk, boxes, flip, amp, device):
    """Pose for a chunk of frames -> one list per frame of (bbox, keypoints (K, 3), score):
    the frame's --boxes, or the whole frame when there are none."""
    items, owner = [], []
    for n, (index, frame) in enumerate(chunk):
        whole = [([0.0, 0.0, float(frame.shape[1]), float(frame.shape[0])], 1.0)]
        for bbox, score in (boxes.get(index, []) if boxes is not None else whole):
            items.append((frame, bbox, score))
            owner.append(n)
    predictions = predict_crops(model, items, ckpt, flip, amp, device, len(chunk),
                                workers=0) if items else []
    per_frame = [[] for _ in chunk]
    for n, (_, bbox, _), (keypoints, score) in zip(owner, items, predictions):
        per_frame[n].append((bbox, keypoints, score))
    return per_frame


def run_video(model, ckpt, args, flip, device, out_dir):
    """Pose on every frame: <stem>_pose.mp4 (same size and fps, mp4v, poses drawn) and
    <stem>_keypoints.json (keypoint names once, then per frame its instances)."""
    capture, fps, width, height, count = open_video(args.video)
    boxes = video_boxes(args.boxes, width, height, count) if args.boxes else None
    stem = os.path.join(out_dir, os.path.splitext(os.path.basename(args.video))[0])
    writer = cv2.VideoWriter(stem + "_pose.mp4", cv2.VideoWriter_fourcc(*"mp4v"), fps,
                             (width, height))
    if not writer.isOpened():
        raise OSError(f"cannot write {stem}_pose.mp4 (no mp4v encoder in this OpenCV?)")
    style, frames = draw_context(ckpt, args.vis_names), []
    bar = tqdm(total=count or None, unit="frame", disable=not sys.stderr.isatty())
    try:
        for chunk in frame_chunks(capture, args.batch_size):
            for (index, frame), poses in zip(chunk, predict_frames(model, ckpt, chunk, boxes,
                                                                   flip, args.amp, device)):
                frames.append({"frame": index, "instances": [
                    {"bbox": bbox, "score": score, "keypoints": rounded_list(keypoints)}
                    for bbox, keypoints, score in poses]})
                writer.write(visualize.overlay(frame, [k for _, k, _ in poses], style["skeleton"],
                                               style["sides"], VIS_THRESHOLD,
                                               names=style["names"], legend=False))
            bar.update(len(chunk))
    finally:
        bar.close()
        writer.release()
        capture.release()
    write_json(stem + "_keypoints.json", {
        "video": os.path.abspath(args.video), "fps": fps, "width": width, "height": height,
        "frames": len(frames), "keypoint_names": list(ckpt["keypoint_names"]),
        "skeleton": ckpt["skeleton"], "predictions": frames})
    print(f"{len(frames)} frames -> {stem}_pose.mp4 and {stem}_keypoints.json")
