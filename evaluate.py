"""Evaluate a PromptPose / SimpleBaseline checkpoint, or run it on your own photos.

    python evaluate.py out/best.pt                              # the val json it was trained with
    python evaluate.py out/best.pt --ann val.json --images data/  # any COCO-format keypoint json
    python evaluate.py out/best.pt --images photos/ [--boxes boxes.json]   # your own photos
    torchrun --nproc_per_node=8 evaluate.py out/best.pt         # sharded; identical numbers

Top-down protocol of the paper (Sec. 4.1) with ground-truth boxes: crop every instance,
predict heatmaps (averaged with those of the flipped crop: flip test), decode argmax plus a
quarter-pixel shift, map back to the image, score an instance by the mean of its keypoint
maxima above 0.2. Metrics are pycocotools' keypoint statistics computed with the dataset's
own OKS sigmas (pycocotools silently defaults to the COCO *human* sigmas otherwise).
The checkpoint is the config: the model is rebuilt from it alone and loaded strictly.
"""
import argparse
import contextlib
import io
import json
import os
import sys
import time

import cv2
import numpy as np
import torch
import torch.distributed as dist
from pycocotools.cocoeval import COCOeval

from dataset import (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, KeypointDataset,
                     box_to_center_scale, decode_heatmaps, flip_back_heatmaps,
                     get_affine_transform, heatmap_to_image)
from losses import sample_keypoint_features
from model import build_model

STAT_NAMES = ["AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL"]
SCORE_THRESHOLD = 0.2  # keypoint maxima below this do not count towards the instance score
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def get_args_parser():
    p = argparse.ArgumentParser("PromptPose evaluation / inference", add_help=True)
    p.add_argument("checkpoint", help="a checkpoint written by train.py (last.pt or best.pt)")
    g = p.add_argument_group("data")
    g.add_argument("--ann", default=None,
                   help="COCO-format keypoint json to evaluate on (default: the run's --val-ann)")
    g.add_argument("--images", nargs="+", default=None,
                   help="with --ann (or none): the image directory (default: the run's); "
                        "without --ann: your own photos, as files and/or directories")
    g.add_argument("--boxes", default=None,
                   help="own photos only: json list of {\"file_name\", \"bbox\": [x,y,w,h], "
                        "optional \"score\"}; without it the whole image is the box")
    g.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    g.add_argument("--workers", type=int, default=4, help="data loader processes")
    g = p.add_argument_group("inference")
    g.add_argument("--no-flip-test", dest="flip_test", action="store_false",
                   help="disable the flip test (on by default, as in the paper)")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                   help="autocast dtype on GPU (none = fp32)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    g = p.add_argument_group("output")
    g.add_argument("--output-dir", default=None,
                   help="where results.json, metrics.json and vis/ go "
                        "(default: eval/ next to the checkpoint)")
    g.add_argument("--vis", type=int, default=0, metavar="N",
                   help="write overlays for N instances, plus the paper's Fig. 2 (semantic "
                        "similarity matrix) and Fig. 3 (pixel-level score maps)")
    return p


# ----------------------------------------------------------------------------- distributed
def init_distributed():
    """torchrun sets RANK/LOCAL_RANK/WORLD_SIZE; plain `python` runs one process, no group.
    Returns (rank, local_rank, world_size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, local_rank, world, device


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def image_normalization(backbone):
    """Mean/std of the backbone's pre-training: ImageNet for the torchvision ResNet, else CLIP."""
    if backbone == "imagenet-rn50":
        return IMAGENET_MEAN, IMAGENET_STD
    return CLIP_MEAN, CLIP_STD


# ----------------------------------------------------------------------------- checkpoint
def load_checkpoint(path):
    """Read a train.py checkpoint with weights_only=True, or say clearly what the file is not."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip/pickle errors of every kind: report them all the same way
        raise ValueError(f"{path!r} could not be read as a PromptPose checkpoint "
                         f"({type(e).__name__}: {e}); expected last.pt/best.pt written by "
                         f"train.py") from e
    needed = ("model", "model_config", "keypoint_names")
    missing = [k for k in needed if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path!r} is not a PromptPose checkpoint (missing {missing}); "
                         f"CLIP or ImageNet weights go to train.py --clip-weights / "
                         f"--imagenet-weights instead")
    return ckpt


def model_from_checkpoint(ckpt):
    """Rebuild the exact architecture from the stored config and load the weights strictly."""
    model = build_model(ckpt["model_config"], ckpt["keypoint_names"])
    model.load_state_dict(ckpt["model"], strict=True)
    return model


def check_keypoints_match(ckpt_names, dataset_names, ann_file):
    if list(ckpt_names) != list(dataset_names):
        raise ValueError(
            f"{ann_file!r} defines {len(dataset_names)} keypoints {list(dataset_names)}, but the "
            f"checkpoint was trained on {len(ckpt_names)} keypoints {list(ckpt_names)}; evaluate "
            f"on an annotation file with the checkpoint's keypoints (same names, same order)")


# ----------------------------------------------------------------------------- prediction
@torch.no_grad()
def predict_batch(model, images, flip_pairs, flip_test, amp="none"):
    """Heatmaps of a batch of crops, averaged with the flipped crops when flip_test.
    images (B, 3, H, W) -> numpy (B, K, h, w) float32."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
        heatmaps = model(images)["heatmaps"].float().cpu().numpy()
        if flip_test:
            flipped = model(images.flip(3))["heatmaps"].float().cpu().numpy()
            heatmaps = 0.5 * (heatmaps + flip_back_heatmaps(flipped, flip_pairs))
    return heatmaps


def heatmaps_to_keypoints(heatmaps, center, scale):
    """(B, K, h, w) heatmaps + crop geometry -> image keypoints (B, K, 3) as [x, y, maxval]
    and instance scores (B,) = mean of the maxima above SCORE_THRESHOLD (0 if none)."""
    coords, maxvals = decode_heatmaps(heatmaps)                      # (B, K, 2), (B, K)
    h, w = heatmaps.shape[2:]
    points = heatmap_to_image(coords, center, scale, (w, h))         # (B, K, 2)
    above = maxvals > SCORE_THRESHOLD
    scores = np.where(above.any(1), (maxvals * above).sum(1) / np.maximum(above.sum(1), 1), 0.0)
    return np.concatenate([points, maxvals[..., None]], axis=2), scores


def predict_dataset(model, dataset, args, device, rank=0, world=1, progress=False):
    """Every instance of `dataset` -> COCO keypoint results, sharded over ranks
    (rank r takes indices r, r+world, ...) and gathered: each instance exactly once."""
    indices = list(range(rank, len(dataset), world))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=args.batch_size, shuffle=False,
        num_workers=args.workers, pin_memory=device.type == "cuda",
        persistent_workers=False)
    model.eval()
    results = []
    batches = loader
    if progress:
        from tqdm import tqdm
        batches = tqdm(loader, desc="eval", leave=False)
    for batch in batches:
        images = batch["image"].to(device, non_blocking=True)
        heatmaps = predict_batch(model, images, dataset.flip_pairs, args.flip_test, args.amp)
        keypoints, scores = heatmaps_to_keypoints(heatmaps, batch["center"].numpy(),
                                                  batch["scale"].numpy())
        for i in range(len(images)):
            results.append({
                "image_id": int(batch["image_id"][i]),
                "category_id": int(batch["category_id"][i]),
                "ann_id": int(batch["ann_id"][i]),
                "keypoints": [round(float(v), 3) for v in keypoints[i].reshape(-1)],
                "score": float(scores[i] * batch["bbox_score"][i]),
            })
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    return sorted(results, key=lambda r: r["ann_id"])


# ----------------------------------------------------------------------------- metrics
def coco_keypoint_eval(coco_gt, results, sigmas):
    """pycocotools keypoint evaluation with explicit OKS sigmas.
    Returns (stats {name: value}, per-category AP {category_id: AP or nan})."""
    if not results:
        raise ValueError("no predictions to evaluate (empty dataset?)")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}
    precision = ev.eval["precision"]            # (T thresholds, R recalls, C cats, A areas, M dets)
    per_category = {}
    for c, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, c, 0, -1]           # area "all", maxDets 20
        per_category[cat_id] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
    return stats, per_category


def group_table(coco_gt, per_category):
    """Per-species and per-family (supercategory) AP, as AP-10K reports them: a family's AP
    is the mean over its species, like pycocotools averages over categories."""
    cats = coco_gt.loadCats(coco_gt.getCatIds())
    counts = {c["id"]: len(coco_gt.getAnnIds(catIds=[c["id"]], iscrowd=False)) for c in cats}
    species = [(c["name"], c.get("supercategory", ""), counts[c["id"]], per_category[c["id"]])
               for c in cats if counts[c["id"]] > 0]
    families = {}
    for name, family, n, ap in species:
        families.setdefault(family, []).append((n, ap))
    family_rows = [(f, sum(n for n, _ in v), float(np.nanmean([ap for _, ap in v])))
                   for f, v in families.items()]
    return species, family_rows


def format_report(stats, species, families):
    lines = ["| " + " | ".join(STAT_NAMES[:6]) + " |", "|" + "---|" * 6,
             "| " + " | ".join(f"{stats[k]:.3f}" for k in STAT_NAMES[:6]) + " |"]
    if len(species) > 1:
        lines += ["", "Per species (worst first):", "| species | family | instances | AP |",
                  "|---|---|---|---|"]
        lines += [f"| {n} | {f} | {c} | {ap:.3f} |"
                  for n, f, c, ap in sorted(species, key=lambda r: np.nan_to_num(r[3]))]
        lines += ["", "Per family (worst first):", "| family | instances | AP |", "|---|---|---|"]
        lines += [f"| {f} | {c} | {ap:.3f} |"
                  for f, c, ap in sorted(families, key=lambda r: np.nan_to_num(r[2]))]
    return "\n".join(lines)


def evaluate_dataset(model, dataset, args, device, rank=0, world=1, progress=False):
    """Predict + COCO metrics. Every rank returns (results, stats, species, families);
    only rank 0 has the metrics, the others get None for them."""
    results = predict_dataset(model, dataset, args, device, rank, world, progress)
    if rank != 0:
        return results, None, None, None
    stats, per_category = coco_keypoint_eval(dataset.coco, results, dataset.sigmas)
    species, families = group_table(dataset.coco, per_category)
    return results, stats, species, families


# ----------------------------------------------------------------------------- drawing
def draw_skeleton(image, keypoints, skeleton, color, threshold=SCORE_THRESHOLD):
    """Draw keypoints (K, 3) [x, y, score or visibility] and the skeleton (0-based index
    pairs, as KeypointDataset.skeleton) whose both ends are above `threshold`, in place."""
    for a, b in skeleton:
        pa, pb = keypoints[a], keypoints[b]
        if pa[2] > threshold and pb[2] > threshold:
            cv2.line(image, (int(pa[0]), int(pa[1])), (int(pb[0]), int(pb[1])), color, 2,
                     cv2.LINE_AA)
    for x, y, s in keypoints:
        if s > threshold:
            cv2.circle(image, (int(x), int(y)), 3, color, -1, cv2.LINE_AA)
    return image


def colorize(values, lo, hi):
    """(h, w) floats -> (h, w, 3) uint8 JET colours, lo..hi mapped to 0..255."""
    scaled = np.clip((values - lo) / max(hi - lo, 1e-6), 0, 1)
    return cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)


def score_map_figure(crop_bgr, score_map, names):
    """Paper Fig. 3: each keypoint's pixel-level score map S_n (h0, w0), upsampled and blended
    with the crop, tiled with its name. score_map (K, h0, w0) -> one BGR image."""
    H, W = crop_bgr.shape[:2]
    lo, hi = float(score_map.min()), float(score_map.max())
    tiles = []
    for s, name in zip(score_map, names):
        heat = colorize(cv2.resize(s, (W, H), interpolation=cv2.INTER_LINEAR), lo, hi)
        tile = cv2.addWeighted(crop_bgr, 0.5, heat, 0.5, 0)
        cv2.putText(tile, name[:20], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        tiles.append(tile)
    cols = 6
    tiles += [np.zeros_like(crop_bgr)] * (-len(tiles) % cols)
    rows = [np.concatenate(tiles[i:i + cols], axis=1) for i in range(0, len(tiles), cols)]
    return np.concatenate(rows, axis=0)


def similarity_figure(similarity, names, visible, cell=28):
    """Paper Fig. 2: the semantic matching matrix M (Eq. 7) between grid-sampled keypoint
    features (rows) and prompt embeddings (columns); rows of invisible keypoints are grey."""
    K = len(names)
    pad = 120
    img = np.full((pad + K * cell, pad + K * cell, 3), 255, np.uint8)
    heat = colorize(similarity, -1.0, 1.0)
    for i in range(K):
        for j in range(K):
            color = heat[i, j].tolist() if visible[i] else [200, 200, 200]
            y, x = pad + i * cell, pad + j * cell
            cv2.rectangle(img, (x, y), (x + cell - 1, y + cell - 1), color, -1)
        cv2.putText(img, names[i][:16], (2, pad + i * cell + cell // 2 + 4),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1)
    label = np.full((pad, pad + K * cell, 3), 255, np.uint8)
    for j in range(K):  # column labels, written rotated
        t = np.full((cell, pad, 3), 255, np.uint8)
        cv2.putText(t, names[j][:16], (2, cell // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.33,
                    (0, 0, 0), 1)
        label[:, pad + j * cell:pad + (j + 1) * cell] = cv2.rotate(t, cv2.ROTATE_90_COUNTERCLOCKWISE)
    img[:pad] = np.minimum(img[:pad], label)
    return img


def unnormalize(image, mean, std):
    """(3, H, W) normalised float tensor -> (H, W, 3) uint8 BGR for drawing."""
    rgb = image.permute(1, 2, 0).cpu().numpy() * np.asarray(std) + np.asarray(mean)
    return np.ascontiguousarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)[..., ::-1])


@torch.no_grad()
def write_visualisations(model, dataset, results, count, out_dir, device, mean, std):
    """Overlays of prediction (red) vs ground truth (green) for the first `count` instances;
    for PromptPose models also Fig. 2 and Fig. 3 of the paper for each of them."""
    os.makedirs(out_dir, exist_ok=True)
    by_ann = {r["ann_id"]: r for r in results}
    model.eval()
    for index in range(min(count, len(dataset))):
        item = dataset[index]
        ann = dataset.coco.anns[item["ann_id"]]
        info = dataset.coco.imgs[item["image_id"]]
        image = cv2.imread(os.path.join(dataset.image_dir, info["file_name"]), cv2.IMREAD_COLOR)
        gt = np.asarray(ann["keypoints"], np.float32).reshape(-1, 3)
        pred = np.asarray(by_ann[item["ann_id"]]["keypoints"], np.float32).reshape(-1, 3)
        draw_skeleton(image, gt, dataset.skeleton, (0, 200, 0), threshold=0)
        draw_skeleton(image, pred, dataset.skeleton, (0, 0, 255))
        stem = os.path.join(out_dir, f"{item['image_id']}_{item['ann_id']}")
        cv2.imwrite(stem + "_overlay.png", image)
        crop_tensor = torch.as_tensor(item["image"])                        # (3, H, W)
        out = model(crop_tensor[None].to(device), return_extras=True)
        if "score_map" in out:
            crop = unnormalize(crop_tensor, mean, std)
            cv2.imwrite(stem + "_scoremaps.png",
                        score_map_figure(crop, out["score_map"][0].float().cpu().numpy(),
                                         dataset.keypoint_names))
        if "dense" in out:
            keypoints = torch.as_tensor(item["keypoints"])[None].to(device)     # (1, K, 2)
            w, h = dataset.heatmap_size
            feats = sample_keypoint_features(out["dense"].float(), keypoints, (h, w))[0]  # (K, C)
            prompts = out["prompts"][0].float()                                 # (K, C)
            sim = torch.nn.functional.normalize(feats, dim=-1) @ \
                torch.nn.functional.normalize(prompts, dim=-1).T                # (K, K)
            visible = np.asarray(item["target_weight"]) > 0
            cv2.imwrite(stem + "_similarity.png",
                        similarity_figure(sim.cpu().numpy(), dataset.keypoint_names, visible))


# ----------------------------------------------------------------------------- own photos
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
        raise ValueError(f"--images {paths}: no image files found ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def read_boxes(path):
    """--boxes json: [{"file_name": "a.jpg", "bbox": [x, y, w, h], "score": 0.9}, ...]
    -> {basename: [(bbox, score), ...]}."""
    try:
        with open(path) as f:
            entries = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--boxes {path!r} could not be read as json: {e}") from e
    boxes = {}
    for i, e in enumerate(entries if isinstance(entries, list) else []):
        if not (isinstance(e, dict) and "file_name" in e and len(e.get("bbox", [])) == 4):
            raise ValueError(f"--boxes {path!r}, entry {i}: expected "
                             f"{{\"file_name\": ..., \"bbox\": [x, y, w, h]}}, got {e!r}")
        boxes.setdefault(os.path.basename(e["file_name"]), []).append(
            ([float(v) for v in e["bbox"]], float(e.get("score", 1.0))))
    if not boxes:
        raise ValueError(f"--boxes {path!r}: expected a non-empty json list of boxes")
    return boxes


class PhotoDataset(torch.utils.data.Dataset):
    """Crops of a user's own photos: one item per (image, box), same geometry as evaluation."""

    def __init__(self, files, boxes, image_size, mean, std):
        self.image_size = image_size                    # (H, W)
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.items = []
        for path in files:
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"{path!r} could not be decoded as an image")
            h, w = image.shape[:2]
            for bbox, score in (boxes or {}).get(os.path.basename(path),
                                                 [([0.0, 0.0, w, h], 1.0)]):
                self.items.append((path, bbox, score))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, bbox, score = self.items[i]
        H, W = self.image_size
        center, scale = box_to_center_scale(bbox, W / H)
        M = get_affine_transform(center, scale, 0.0, (W, H))
        image = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        crop = cv2.warpAffine(image, M, (W, H), flags=cv2.INTER_LINEAR)
        crop = (crop.astype(np.float32) / 255.0 - self.mean) / self.std
        return {"image": torch.from_numpy(crop.transpose(2, 0, 1).copy()),
                "center": torch.as_tensor(center, dtype=torch.float32),
                "scale": torch.as_tensor(scale, dtype=torch.float32),
                "bbox_score": torch.tensor(score, dtype=torch.float32), "index": i}


def run_photos(model, ckpt, args, device, out_dir):
    names = ckpt["keypoint_names"]
    mean, std = image_normalization(ckpt["model_config"]["backbone"])
    files = list_images(args.images)
    dataset = PhotoDataset(files, read_boxes(args.boxes) if args.boxes else None,
                           ckpt["model_config"]["image_size"], mean, std)
    flip_pairs = ckpt["flip_pairs"]
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size,
                                         num_workers=args.workers)
    model.eval()
    outputs = []
    for batch in loader:
        heatmaps = predict_batch(model, batch["image"].to(device), flip_pairs, args.flip_test,
                                 args.amp)
        keypoints, scores = heatmaps_to_keypoints(heatmaps, batch["center"].numpy(),
                                                  batch["scale"].numpy())
        for j, i in enumerate(batch["index"].tolist()):
            path, bbox, _ = dataset.items[i]
            outputs.append({"file_name": path, "bbox": bbox, "keypoint_names": names,
                            "keypoints": keypoints[j].round(3).tolist(),
                            "score": float(scores[j] * batch["bbox_score"][j])})
    os.makedirs(os.path.join(out_dir, "vis"), exist_ok=True)
    for path in files:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        for o in (o for o in outputs if o["file_name"] == path):
            draw_skeleton(image, np.asarray(o["keypoints"]), ckpt["skeleton"], (0, 0, 255))
        cv2.imwrite(os.path.join(out_dir, "vis", os.path.splitext(os.path.basename(path))[0]
                                 + "_pose.png"), image)
    with open(os.path.join(out_dir, "photo_results.json"), "w") as f:
        json.dump(outputs, f, indent=1)
    print(f"{len(outputs)} instances in {len(files)} images -> "
          f"{os.path.join(out_dir, 'photo_results.json')}, overlays in {out_dir}/vis")


# ----------------------------------------------------------------------------- main
def main(args):
    rank, _, world, device = init_distributed()
    if args.device:
        device = torch.device(args.device)
    ckpt = load_checkpoint(args.checkpoint)
    out_dir = args.output_dir or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)),
                                              "eval")
    # channels_last (NHWC): faster convolutions (BENCHMARKS.md)
    model = model_from_checkpoint(ckpt).to(device, memory_format=torch.channels_last)
    if args.compile:
        model = torch.compile(model)

    if args.images is not None and args.ann is None:  # own photos
        if rank == 0:
            run_photos(model, ckpt, args, device, out_dir)
        if is_distributed():
            dist.destroy_process_group()
        return None

    run_args = ckpt.get("args", {})
    ann = args.ann or run_args.get("val_ann")
    images = args.images[0] if args.images else (run_args.get("val_images") or run_args.get("images"))
    if not ann or not images:
        raise ValueError("no annotation file / image directory given and none stored in the "
                         "checkpoint: pass --ann VAL_JSON --images DIR")
    cfg = ckpt["model_config"]
    mean, std = image_normalization(cfg["backbone"])
    dataset = KeypointDataset(ann, images, train=False,  # model: [H, W]; dataset: (W, H)
                              image_size=tuple(cfg["image_size"][::-1]),
                              heatmap_size=tuple(cfg["heatmap_size"][::-1]), mean=mean, std=std)
    check_keypoints_match(ckpt["keypoint_names"], dataset.keypoint_names, ann)
    start = time.time()
    results, stats, species, families = evaluate_dataset(model, dataset, args, device, rank,
                                                         world, progress=rank == 0)
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(results, f)
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump({"checkpoint": os.path.abspath(args.checkpoint), "ann": ann,
                       "flip_test": args.flip_test, "world_size": world, **stats,
                       "per_species": {n: ap for n, _, _, ap in species},
                       "per_family": {f: ap for f, _, ap in families}}, f, indent=1)
        print(f"{len(results)} instances from {ann} in {time.time() - start:.1f}s "
              f"(flip test {'on' if args.flip_test else 'off'}, {world} process(es))")
        print(format_report(stats, species, families))
        if args.vis:
            write_visualisations(model, dataset, results, args.vis, os.path.join(out_dir, "vis"),
                                 device, mean, std)
            print(f"visualisations in {os.path.join(out_dir, 'vis')}")
    if is_distributed():
        dist.destroy_process_group()
    return stats


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
