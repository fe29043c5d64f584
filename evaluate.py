"""Evaluate a PromptPose / SimpleBaseline checkpoint, or run it on your own photos and videos.

    python evaluate.py RUN/final.pt                     # the run's val json: AP, PCK, pixel error
    python evaluate.py RUN/final.pt --ann val.json --images data/   # any COCO keypoint json
    python evaluate.py RUN/final.pt --ann person_keypoints_val2017.json --images val2017/ \
        --det-boxes person_detections.json                  # detected boxes (Table 3's "Human AP")
    python evaluate.py RUN/final.pt --images photos/ [--boxes boxes.json]   # your own photos
    python evaluate.py RUN/final.pt --video clip.mp4 [--boxes boxes.json]   # a video, every frame
    torchrun --nproc_per_node=8 evaluate.py RUN/final.pt    # sharded; identical numbers

Top-down protocol of the paper (Sec. 4.1), as the authors ran it (mmpose): crop every box
(ground truth, or detections), predict heatmaps averaged with those of the flipped crop (flip
test), decode with Eq. 1 and map back to the image. Instance score = box score x mean of the
keypoint maxima above 0.2; then OKS-NMS at 0.9 among the instances of each image. AP/AR are
pycocotools' keypoint statistics with the run's own OKS sigmas (pycocotools silently uses the
COCO *human* sigmas otherwise). PCK and pixel error compare each ground-truth box's prediction
with that instance. The checkpoint is the config: model, keypoints, flip pairs and sigmas.
"""
import argparse
import contextlib
import io
import os
import time
from collections import defaultdict

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval

import visualize
from checkpoint import load_checkpoint
from dataset import (KeypointDataset, clip_box, default_workers, index_coco, load_coco_json,
                     load_detections, make_loader, read_keypoint_set)
from distributed import (HelpFormatter, all_gather_list, cleanup, finite_float, init_distributed,
                         non_negative_int, on_rank0, positive, print0, run_cli)
from files import claim_output_dir, write_json
from keypoints import sigma_list
from model import AMP_DTYPES
from predict import (VIS_THRESHOLD, draw_context, predict_batches, predict_heatmaps,
                     prepare_model, rounded_list, run_photos, run_video)
from transforms import keypoints_from_heatmaps, read_image

STAT_NAMES = ["AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL"]

OKS_NMS_THRESHOLD = 0.9   # drop an instance whose OKS with a better one exceeds this (oks_thr)

PCK_THRESHOLD = 0.2       # default --pck-threshold, a fraction of the box size


def get_args_parser():
    p = argparse.ArgumentParser("PromptPose evaluation / inference", allow_abbrev=False,
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint of train.py (final.pt, best.pt, last.pt)")
    g = p.add_argument_group("data")
    g.add_argument("--ann", help="COCO-format keypoint json to score (default: the run's "
                                 "--val-ann)")
    g.add_argument("--images", nargs="+", help="with --ann: its image directory (default: the "
                   "run's); without --ann: your own photos, as files and/or directories")
    g.add_argument("--det-boxes", help="COCO detection results json ([{image_id, category_id, "
                   "bbox, score}]) whose boxes are cropped (default: the ground-truth boxes)")
    g.add_argument("--det-score-threshold", type=finite_float, default=0.0,
                   help="--det-boxes: keep the detections scored at least this")
    g.add_argument("--boxes", help="own photos: json list of {\"file_name\", \"bbox\": [x, y, "
                   "w, h], \"score\"}; --video: of {\"frame\", \"bbox\", \"score\"}; only "
                   "these boxes get a pose (default: the whole image / frame)")
    g.add_argument("--video", help="a video file: pose on every frame, a labelled .mp4 and a "
                                   "json (default: no video)")
    g.add_argument("--sigmas", type=sigma_list, help="comma-separated OKS sigmas, one per keypoint "
                   "(default: the run's, stored in the checkpoint)")
    g.add_argument("--batch-size", type=positive(int), help="crops per forward pass (default: "
                   "the run's --eval-batch-size, else 32)")
    g.add_argument("--workers", type=non_negative_int,
                   default=default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))),
                   help="data loader processes (the default: this machine's CPUs per process, "
                        "at most 8)")
    g = p.add_argument_group("inference")
    g.add_argument("--no-flip-test", dest="flip_test", action="store_false",
                   help="no flip test (default: the flip test is on, as in the paper; off by "
                        "itself when the checkpoint has no flip pairs)")
    g.add_argument("--amp", choices=list(AMP_DTYPES), help="autocast dtype (default: the run's "
                   "--amp, so that the val AP of the log is reproduced exactly; else none)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--device", help="cuda, cuda:1 or cpu (default: a GPU when there is one)")
    g = p.add_argument_group("metrics and output")
    g.add_argument("--pck-threshold", type=positive(float), default=PCK_THRESHOLD,
                   help="PCK: correct when the error is below this fraction of the box size")
    g.add_argument("--output-dir", help="where the outputs go; a directory holding outputs of "
                   "an earlier evaluation is kept and DIR-2, DIR-3, ... used instead (default: "
                   "eval/ beside the checkpoint)")
    g.add_argument("--vis", type=non_negative_int, default=0, metavar="N",
                   help="figures for the first N boxes: overlay, paper Fig. 2 and Fig. 3")
    g.add_argument("--vis-names", action="store_true", help="write keypoint names on overlays")
    return p


def check_flag_combination(args):
    if args.video and (args.ann or args.images or args.det_boxes):
        raise ValueError("--video runs on a video alone: leave out --ann, --images, --det-boxes")
    photos = args.images is not None and args.ann is None and not args.video
    if args.boxes and not (photos or args.video):
        raise ValueError("--boxes is for own photos (--images without --ann) or --video; "
                         "with --ann use --det-boxes")
    if args.det_boxes and (photos or args.video):
        raise ValueError("--det-boxes is for scoring a COCO json (--ann, or the run's val json); "
                         "own photos and videos take --boxes")
    if args.ann and args.images and len(args.images) > 1:
        raise ValueError(f"--images with --ann takes one image directory, got {len(args.images)}")
    return "video" if args.video else "photos" if photos else "dataset"


def predict_dataset(model, dataset, *, batch_size, workers, flip, amp, device, rank=0, world=1,
                    progress=False):
    """Every box of a KeypointDataset -> one prediction each, COCO results format plus
    'ann_id' (None for detections), 'center' and 'scale' (the crop), in dataset order. Rank r
    predicts indices r, r + world, ...; the lists are gathered, so every rank gets all."""
    indices = list(range(rank, len(dataset), world))
    loader = make_loader(torch.utils.data.Subset(dataset, indices), batch_size, workers,
                         shuffle=False, pin_memory=device.type == "cuda")
    results = []
    for batch, keypoints, scores in predict_batches(model, loader, dataset.flip_pairs, flip,
                                                    amp, device, progress, "eval"):
        for i in range(len(scores)):
            results.append({
                "index": indices[len(results)], "image_id": int(batch["image_id"][i]),
                "category_id": int(batch["category_id"][i]),
                "ann_id": None if batch["detection"][i] else int(batch["ann_id"][i]),
                "keypoints": rounded_list(keypoints[i]),
                "score": float(scores[i]),
                "center": rounded_list(batch["center"][i]),
                "scale": rounded_list(batch["scale"][i])})
    results = sorted(all_gather_list(results), key=lambda r: r["index"])
    return [{k: v for k, v in r.items() if k != "index"} for r in results]


def oks_overlap(pose, others, area, other_areas, sigmas):
    """OKS of one pose (K, 3) with others (N, K, 3), as mmpose's oks_iou for NMS: every keypoint
    counts, the object scale is the mean of the two box areas:
        OKS = mean_k exp(-d_k^2 / (2 * (a + a') / 2 * (2 sigma_k)^2))   -> (N,)"""
    var = (2.0 * np.asarray(sigmas, np.float64)) ** 2                         # (K,)
    d2 = ((others[..., :2] - pose[None, :, :2]) ** 2).sum(-1)                 # (N, K)
    e = d2 / var / ((area + other_areas)[:, None] / 2 + np.spacing(1)) / 2
    return np.exp(-e).mean(1)


def oks_nms(poses, scores, areas, sigmas, threshold=OKS_NMS_THRESHOLD):
    """Greedy OKS-NMS (mmpose oks_nms): take the best-scored pose, drop every other whose OKS
    with it is above `threshold`, repeat. poses (N, K, 3), scores (N,), areas (N,) -> kept
    indices, best first (ties: the earlier pose first)."""
    poses, areas = np.asarray(poses, np.float64), np.asarray(areas, np.float64)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        order = rest[oks_overlap(poses[i], poses[rest], areas[i], areas[rest], sigmas) <= threshold]
    return keep


def nms_per_image(results, sigmas, threshold=OKS_NMS_THRESHOLD):
    """OKS-NMS among the predictions of each image; the area of a prediction is that of its
    crop box (scale_w x scale_h, as mmpose). Returns the kept results in their input order."""
    by_image = defaultdict(list)
    for j, r in enumerate(results):
        by_image[r["image_id"]].append(j)
    kept = []
    for idx in by_image.values():
        poses = np.array([results[j]["keypoints"] for j in idx]).reshape(len(idx), -1, 3)
        areas = np.array([np.prod(results[j]["scale"]) for j in idx])
        scores = np.array([results[j]["score"] for j in idx])
        kept += [idx[k] for k in oks_nms(poses, scores, areas, sigmas, threshold)]
    return [results[j] for j in sorted(kept)]


def coco_keypoint_eval(coco_gt, results, sigmas):
    """pycocotools keypoint evaluation with explicit OKS sigmas.
    Returns (stats {name: value}, per-category AP {category_id: AP or nan})."""
    if not results:
        raise ValueError("no predictions to evaluate (no boxes: empty dataset, or every "
                         "detection below --det-score-threshold?)")
    if min(coco_gt.anns, default=1) <= 0:  # pycocotools reads a ground-truth id 0 as "unmatched"
        coco_gt = index_coco(dict(coco_gt.dataset, annotations=[
            dict(a, id=n + 1) for n, a in enumerate(coco_gt.dataset["annotations"])]))
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


def matched_keypoints(results, coco):
    """Predictions made from ground-truth boxes next to their instance: pred (N, K, 2),
    gt (N, K, 2), labeled (N, K) bool (v > 0), box (N, 2) = (w, h) of the instance's box
    clipped to the image. Predictions from detections (ann_id None) have no instance."""
    rows = [r for r in results if r["ann_id"] is not None]
    anns = [coco.anns[r["ann_id"]] for r in rows]
    K = len(results[0]["keypoints"]) // 3 if results else 0
    pred = np.array([r["keypoints"] for r in rows], np.float64).reshape(len(rows), K, 3)
    gt = np.array([a["keypoints"] for a in anns], np.float64).reshape(len(rows), K, 3)
    box = np.array([clip_box(a["bbox"], coco.imgs[a["image_id"]]["width"],
                             coco.imgs[a["image_id"]]["height"])[2:] for a in anns]).reshape(-1, 2)
    return pred[..., :2], gt[..., :2], gt[..., 2] > 0, box


def pck_accuracy(pred, gt, labeled, normalize, threshold):
    """PCK as mmpose's keypoint_pck_accuracy: a labeled keypoint is correct when
    || (pred - gt) / normalize || < threshold, normalize (N, 2) per axis; mmpose's
    norm_item='bbox' passes (max(w, h), max(w, h)) of the ground-truth box. Returns (per
    keypoint (K,) with nan where never labeled, overall = mean over the labeled keypoints'
    values, as mmpose averages)."""
    valid = labeled & (normalize > 0).all(1)[:, None]                             # (N, K)
    dist = np.linalg.norm((pred - gt) / np.maximum(normalize, 1e-12)[:, None, :], axis=-1)
    count = valid.sum(0)
    per_keypoint = np.where(count > 0, ((dist < threshold) & valid).sum(0) / np.maximum(count, 1),
                            np.nan)
    overall = float(np.nanmean(per_keypoint)) if (count > 0).any() else float("nan")
    return per_keypoint, overall


def pixel_errors(pred, gt, labeled):
    """Pixel error of the labeled keypoints in image pixels: RMSE = sqrt(mean of squared
    Euclidean distances) and the mean Euclidean distance, overall and per keypoint (nan where
    never labeled). Returns (rmse (K,), rmse, mean (K,), mean)."""
    d = np.linalg.norm(pred - gt, axis=-1)                                       # (N, K)
    count = labeled.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rmse_k = np.sqrt((d ** 2 * labeled).sum(0) / count)
        mean_k = (d * labeled).sum(0) / count
    n = labeled.sum()
    rmse = float(np.sqrt((d[labeled] ** 2).mean())) if n else float("nan")
    mean = float(d[labeled].mean()) if n else float("nan")
    return rmse_k, rmse, mean_k, mean


def keypoint_accuracy(results, coco, names, pck_threshold):
    """PCK and pixel errors of the ground-truth-box predictions, overall and per keypoint
    (None when every box is a detection)."""
    pred, gt, labeled, box = matched_keypoints(results, coco)
    if not labeled.any():
        return {"pck": None, "rmse_px": None, "mean_error_px": None, "per_keypoint": {}}
    side = box.max(1, keepdims=True).repeat(2, 1)                                # (N, 2)
    pck_k, pck = pck_accuracy(pred, gt, labeled, side, pck_threshold)
    rmse_k, rmse, mean_k, mean = pixel_errors(pred, gt, labeled)
    per_keypoint = {n: {"labeled": int(labeled[:, k].sum()), "pck": float(pck_k[k]),
                        "rmse_px": float(rmse_k[k]), "mean_error_px": float(mean_k[k])}
                    for k, n in enumerate(names)}
    return {"pck": pck, "rmse_px": rmse, "mean_error_px": mean, "per_keypoint": per_keypoint}


def evaluate_dataset(model, dataset, *, batch_size, workers, flip, amp, device, rank=0, world=1,
                     progress=False, pck_threshold=PCK_THRESHOLD):
    """Predict every box, OKS-NMS per image, COCO keypoint AP with dataset.sigmas, PCK and
    pixel errors. Returns (results: the scored predictions, report) on rank 0, (all
    predictions, None) on the others. report: stats {AP, AP50, ...}, pck, pck_threshold,
    rmse_px, mean_error_px, per_keypoint, species, families, skipped, instances, nms_removed."""
    predictions = predict_dataset(model, dataset, batch_size=batch_size, workers=workers,
                                  flip=flip, amp=amp, device=device, rank=rank, world=world,
                                  progress=progress)
    if rank != 0:
        return predictions, None
    results = nms_per_image(predictions, dataset.sigmas)
    stats, per_category = coco_keypoint_eval(dataset.coco, results, dataset.sigmas)
    species, families = group_table(dataset.coco, per_category)
    report = {"stats": stats, "pck_threshold": pck_threshold,
              **keypoint_accuracy(predictions, dataset.coco, dataset.keypoint_names,
                                  pck_threshold),
              "species": [dict(zip(("species", "family", "instances", "AP"), s)) for s in species],
              "families": [dict(zip(("family", "instances", "AP"), f)) for f in families],
              "skipped": dataset.skip_summary, "instances": len(predictions),
              "nms_removed": len(predictions) - len(results)}
    return results, report


def format_report(report, detail=True):
    """The report as markdown tables: AP/AR, PCK and pixel error; with detail also per
    keypoint, per species and per family (worst first)."""
    stats = report["stats"]
    lines = ["| " + " | ".join(STAT_NAMES[:6]) + " |", "|" + "---|" * 6,
             "| " + " | ".join(f"{stats[k]:.3f}" for k in STAT_NAMES[:6]) + " |"]
    if report["pck"] is not None:
        lines.append(f"PCK@{report['pck_threshold']:g} {report['pck']:.3f}, RMSE "
                     f"{report['rmse_px']:.2f} px, mean error {report['mean_error_px']:.2f} px "
                     f"(ground-truth boxes, labeled keypoints)")
    lines.append(f"{report['instances']} instances, {report['nms_removed']} removed by OKS-NMS "
                 f"at {OKS_NMS_THRESHOLD}; {report['skipped']}")
    if detail and report["per_keypoint"]:
        lines += ["", "| keypoint | labeled | PCK | RMSE px |", "|---|---|---|---|"]
        lines += [f"| {n} | {v['labeled']} | {v['pck']:.3f} | {v['rmse_px']:.2f} |"
                  for n, v in report["per_keypoint"].items()]
    if detail and len(report["species"]) > 1:
        lines += ["", "Per species (worst first):", "| species | family | instances | AP |",
                  "|---|---|---|---|"]
        lines += [f"| {s['species']} | {s['family']} | {s['instances']} | {s['AP']:.3f} |"
                  for s in sorted(report["species"], key=lambda s: np.nan_to_num(s["AP"]))]
        lines += ["", "Per family (worst first):", "| family | instances | AP |", "|---|---|---|"]
        lines += [f"| {f['family']} | {f['instances']} | {f['AP']:.3f} |"
                  for f in sorted(report["families"], key=lambda f: np.nan_to_num(f["AP"]))]
    return "\n".join(lines)


def write_figures(model, dataset, count, out_dir, device, flip, amp, ckpt, names_on):
    """For the first `count` boxes: the image with prediction and ground truth, and the
    paper's Fig. 2 and Fig. 3 of the crop. Files: vis/<image id>_<ann id or det#>_*.png."""
    os.makedirs(os.path.join(out_dir, "vis"), exist_ok=True)
    style, cfg = draw_context(ckpt, names_on), ckpt["model_config"]
    model.eval()
    for index in range(min(count, len(dataset))):
        item = dataset[index]
        batch = torch.utils.data.default_collate([item])
        heatmaps = predict_heatmaps(model, batch["image"].to(device), dataset.flip_pairs, flip, amp)
        pred = keypoints_from_heatmaps(heatmaps, batch["center"].numpy(), batch["scale"].numpy())[0]
        image_id, ann_id = int(item["image_id"]), None if item["detection"] else int(item["ann_id"])
        info = dataset.coco.imgs[image_id]
        image = read_image(os.path.join(dataset.image_dir, info["file_name"]))[0]
        ann_ids = [ann_id] if ann_id is not None else dataset.coco.getAnnIds(imgIds=[image_id])
        truth = [np.reshape(dataset.coco.anns[a]["keypoints"], (-1, 3)) for a in ann_ids]
        box = ann_id if ann_id is not None else f"det{index}"
        stem = os.path.join(out_dir, "vis", f"{image_id}_{box}")
        visualize.write_image(stem + "_overlay.png", visualize.overlay(
            image, [pred], style["skeleton"], style["sides"], VIS_THRESHOLD, truth, style["names"]))
        fig3, fig2 = visualize.paper_figures(model, item, tuple(cfg["heatmap_size"]),
                                   ckpt["keypoint_names"], cfg["normalize"], device)
        if fig3 is not None:
            visualize.write_image(stem + "_scoremaps.png", fig3)
        if fig2 is not None:
            visualize.write_image(stem + "_similarity.png", fig2)


def check_keypoints_match(ckpt_names, dataset_names, ann_file):
    if list(ckpt_names) != list(dataset_names):
        raise ValueError(
            f"{ann_file!r} defines {len(dataset_names)} keypoints {list(dataset_names)}, but the "
            f"checkpoint was trained on {len(ckpt_names)} keypoints {list(ckpt_names)}; evaluate "
            f"on an annotation file with the checkpoint's keypoints (same names, same order)")


def run_sigmas(ckpt, sigmas):
    """--sigmas if given (checked against the keypoint count), else the run's."""
    K = len(ckpt["keypoint_names"])
    if sigmas is not None and len(sigmas) != K:
        raise ValueError(f"--sigmas: {len(sigmas)} values given, the checkpoint has {K} keypoints")
    return sigmas if sigmas is not None else ckpt["sigmas"]


def evaluation_dataset(ckpt, ann, image_dir, sigmas, det_boxes=None, det_score_threshold=0.0):
    """The KeypointDataset to score: the checkpoint's sizes, normalisation, flip pairs and
    sigmas; ground-truth boxes, or the detections of `det_boxes` above the threshold."""
    run_args = ckpt.get("args", {})
    ann = ann or run_args.get("val_ann")
    image_dir = image_dir or run_args.get("val_images") or run_args.get("images")
    if not ann or not image_dir:
        raise ValueError("no annotation file / image directory given and none stored in the "
                         "checkpoint: pass --ann VAL_JSON --images DIR")
    cfg = ckpt["model_config"]
    boxes = load_detections(det_boxes, ann, det_score_threshold) if det_boxes else None
    try:
        dataset = KeypointDataset(ann, image_dir, train=False, image_size=cfg["image_size"],
                                  heatmap_size=cfg["heatmap_size"], normalize=cfg["normalize"],
                                  sigmas=run_sigmas(ckpt, sigmas), flip_pairs=ckpt["flip_pairs"],
                                  boxes=boxes,
                                  reduced_decode=run_args.get("reduced_jpeg_decode", False))
    except ValueError:  # the checkpoint's pairs / sigmas do not fit: say why, if that is why
        names = read_keypoint_set(load_coco_json(ann), ann)["names"]
        check_keypoints_match(ckpt["keypoint_names"], names, ann)
        raise
    check_keypoints_match(ckpt["keypoint_names"], dataset.keypoint_names, ann)
    return dataset


def run_dataset(model, ckpt, args, flip, device, rank, world, out_dir):
    """Score a COCO keypoint json; rank 0 writes results.json, metrics.json and figures."""
    dataset = evaluation_dataset(ckpt, args.ann, args.images[0] if args.images else None,
                                 args.sigmas, args.det_boxes, args.det_score_threshold)
    start = time.time()
    results, report = evaluate_dataset(model, dataset, batch_size=args.batch_size,
                                       workers=args.workers, flip=flip, amp=args.amp,
                                       device=device, rank=rank, world=world, progress=rank == 0,
                                       pck_threshold=args.pck_threshold)
    if rank != 0:
        return None
    write_json(os.path.join(out_dir, "results.json"), results)
    write_json(os.path.join(out_dir, "metrics.json"), {
        "checkpoint": os.path.abspath(args.checkpoint), "ann": dataset.ann_file,
        "images": dataset.image_dir, "boxes": os.path.abspath(args.det_boxes) if args.det_boxes
        else "ground truth", "flip_test": flip, "world_size": world,
        "sigmas": [float(s) for s in dataset.sigmas], **report["stats"],
        **{k: v for k, v in report.items() if k != "stats"}}, indent=1)
    print(f"{len(results)} instances from {dataset.ann_file} in {time.time() - start:.1f}s "
          f"(flip test {'on' if flip else 'off'}, amp {args.amp}, batch {args.batch_size}, "
          f"{world} process(es))")
    print(format_report(report))
    if args.vis:
        write_figures(model, dataset, args.vis, out_dir, device, flip, args.amp, ckpt,
                      args.vis_names)
    print(f"outputs in {out_dir}")
    return report


def settings_from_run(args, ckpt):
    """Flags left unset take the run's values (--batch-size, --amp: the val AP of the log is
    reproduced exactly); the flip test needs flip pairs. Returns whether to flip-test."""
    run_args = ckpt.get("args", {})
    args.batch_size = args.batch_size or run_args.get("eval_batch_size") or 32
    args.amp = args.amp or run_args.get("amp") or "none"
    flip = args.flip_test and len(ckpt["flip_pairs"]) > 0
    if args.flip_test and not flip:
        print0("flip test off: the checkpoint has no flip pairs (trained with --no-flip)")
    return flip


def main(args):
    mode = check_flag_combination(args)
    rank, _, world, device = init_distributed(args.device)
    ckpt = load_checkpoint(args.checkpoint)
    flip = settings_from_run(args, ckpt)
    model = prepare_model(ckpt, device, args.compile)
    out_dir = on_rank0(claim_output_dir, args.output_dir or os.path.join(
        os.path.dirname(os.path.abspath(args.checkpoint)), "eval"))
    report = None
    if mode == "dataset":
        report = run_dataset(model, ckpt, args, flip, device, rank, world, out_dir)
    elif rank == 0 and mode == "photos":
        run_photos(model, ckpt, args, flip, device, out_dir)
    elif rank == 0:
        run_video(model, ckpt, args, flip, device, out_dir)
    cleanup()
    return report


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args,
            on_interrupt="interrupted: the files written so far are complete; nothing half-written")
