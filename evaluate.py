"""Evaluate a PromptPose / SimpleBaseline checkpoint, or run it on your own photos and videos.

    python evaluate.py RUN/final.pt                     # the run's val json: AP, PCK, pixel error
    python evaluate.py RUN/final.pt --train-too         # and the run's train json, side by side
    python evaluate.py RUN/final.pt --ann val.json --images data/   # any COCO keypoint json
    python evaluate.py RUN/final.pt --ann person_keypoints_val2017.json --images val2017/ \
        --det-boxes person_detections.json                  # detected boxes (Table 3's "Human AP")
    python evaluate.py RUN/final.pt --images photos/ [--boxes boxes.json]   # your own photos
    python evaluate.py RUN/final.pt --video clip.mp4 [--boxes boxes.json]   # a video, every frame
    torchrun --nproc_per_node=8 evaluate.py RUN/final.pt    # sharded; identical numbers

Top-down protocol of the paper (Sec. 4.1), as the authors ran it (mmpose): crop every box (ground
truth, or detections), predict heatmaps averaged with those of the flipped crop (flip test),
decode with Eq. 1 and map back to the image. Instance score = box score x mean of the keypoint
maxima above 0.2; then OKS-NMS at 0.9 among the instances of each image. AP/AR are pycocotools'
keypoint statistics with the run's own OKS sigmas (pycocotools silently uses the COCO *human*
sigmas otherwise). PCK and pixel errors compare each ground-truth box's prediction with that
instance. The checkpoint is the config: model, keypoints, flip pairs and sigmas. Data without OKS
sigmas (a DeepLabCut project) is reported in a tracking user's terms first (pixel errors, on the
ground-truth boxes and on the full frame: format_report), AP after.
"""
import argparse
import os
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

import visualize
from annotations import load_coco_json, load_detections, read_keypoint_set
from checkpoint import load_checkpoint
from dataset import KeypointDataset, default_workers
from diagnostics import branch_diagnostics, format_branch_diagnostics
from distributed import (HelpFormatter, all_gather_list, cleanup, finite_float, init_distributed,
                         non_negative_int, number_list, on_rank0, own_shard, positive, print0,
                         run_cli)
from files import claim_output_dir, release_output_dir, write_json
from keypoints import sigma_list
from metrics import (FULL_FRAME, GT_BOXES, coco_keypoint_eval, format_report, group_table,
                     keypoint_accuracy, match_instances, nms_per_image)
from model import AMP_DTYPES
from predict import (KEYPOINT_SCORE, PCUTOFF, VIS_THRESHOLD, Predictor, draw_context,
                     photo_poses, predict_dataset, predict_heatmaps, prepare_model, run_photos)
from transforms import keypoints_from_heatmaps, read_image
from video import FOLLOW_MIN_SCORE, parse_frames, run_video

PCK_THRESHOLD = 0.2       # default --pck-threshold, a fraction of the box size
PCK_PIXELS = (5.0, 10.0)  # default --pck-pixels, image pixels


@dataclass(frozen=True)
class Thresholds:
    """What the keypoint metrics count as right: --pck-threshold, --pck-pixels, --pcutoff."""
    box: float = PCK_THRESHOLD
    pixels: tuple = PCK_PIXELS
    pcutoff: float = PCUTOFF

    def accuracy(self, results, dataset):
        return keypoint_accuracy(results, dataset.coco, dataset.keypoint_names, self.box,
                                 self.pixels, self.pcutoff)


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
                   "w, h], \"score\"}, only these boxes get a pose; --video: of {\"frame\", "
                   "\"bbox\", \"score\"}, a frame with entries gets these boxes, the others "
                   "--follow / the search (default: search for the animal)")
    g.add_argument("--video", help="a video file: pose on its frames, a labelled .mp4, a json, a "
                   "DeepLabCut-layout csv, a trajectory figure (default: no video)")
    g.add_argument("--frames", metavar="START:STOP", help="--video: only these frames, 0-based, "
                   "STOP excluded; START: or :STOP (default: every frame)")
    g.add_argument("--follow", action="store_true", help="--video: each frame's box around the "
                   "previous frame's pose, searched again when its mean keypoint score falls "
                   f"below {FOLLOW_MIN_SCORE}: one crop a frame, frame after frame (default: "
                   "search every frame, ~51 crops each on a 4:3 frame)")
    g.add_argument("--whole-frame", action="store_true", help="own photos / --video without "
                   "--boxes: the whole image is the box (default: search for the animal with "
                   "windows, then crop a box around its keypoints)")
    g.add_argument("--sigmas", type=sigma_list, help="comma-separated OKS sigmas, one per keypoint "
                   "(default: the run's, stored in the checkpoint)")
    g.add_argument("--batch-size", type=positive(int), help="crops per forward pass (default: "
                   "the run's --eval-batch-size, else 32)")
    g.add_argument("--workers", type=non_negative_int, help="data loader processes (the default: "
                   "this machine's CPUs per process, at most 8)",
                   default=default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
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
    g.add_argument("--pck-pixels", type=number_list(float),
                   default=",".join(f"{t:g}" for t in PCK_PIXELS),
                   help="PCK at these image pixels too: correct when the error is below each")
    g.add_argument("--pcutoff", type=finite_float, default=PCUTOFF, help="the error 'with "
                   "p-cutoff' (DeepLabCut's) counts the keypoints scoring at least this; overlays "
                   "of own photos and videos leave out those below (the csv and json keep them)")
    g.add_argument("--train-too", action="store_true", help="also evaluate the run's --train-ann "
                   "(stored in the checkpoint) with the same metrics, side by side")
    g.add_argument("--full-frame", action=argparse.BooleanOptionalAction, help="also score "
                   "each image run as an own photo: the model finds the animal, as without "
                   "--boxes (default: on for data without OKS sigmas, a DeepLabCut project, whose "
                   "users compare this figure; off where the json has sigmas, as AP-10K)")
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
    if (args.frames or args.follow) and not args.video:
        raise ValueError("--frames and --follow are for --video")
    if args.follow and args.whole_frame:
        raise ValueError("--follow finds each frame's box from the frame before; --whole-frame "
                         "uses the whole frame: choose one")
    if args.whole_frame and not (photos or args.video):
        raise ValueError("--whole-frame is for own photos (--images without --ann) and --video")
    if (args.train_too or args.full_frame) and (photos or args.video or args.det_boxes):
        raise ValueError("--train-too and --full-frame score a COCO json on its ground truth: "
                         "leave out --det-boxes, and --images without --ann, and --video")
    if args.train_too and args.ann:
        raise ValueError("--train-too puts the run's train json beside its val json: leave out "
                         "--ann (evaluate another json on its own)")
    if min(args.pck_pixels) <= 0:
        raise ValueError(f"--pck-pixels: thresholds are positive pixels, got {args.pck_pixels}")
    if args.frames:
        parse_frames(args.frames)  # a bad range stops here, before the model is loaded
    return "video" if args.video else "photos" if photos else "dataset"


def evaluate_dataset(model, dataset, *, thresholds=Thresholds(), **predict_args):
    """Predict every box (predict_args: predict_dataset's batch_size, workers, flip, amp, device,
    rank, world, progress), OKS-NMS per image, COCO keypoint AP with dataset.sigmas, PCK and pixel
    errors -> (the scored predictions, report) on rank 0, (all predictions, None) on other ranks."""
    predictions = predict_dataset(model, dataset, **predict_args)
    if predict_args.get("rank", 0) != 0:
        return predictions, None
    results = nms_per_image(predictions, dataset.sigmas)
    stats, per_category = coco_keypoint_eval(dataset.coco, results, dataset.sigmas)
    species, families = group_table(dataset.coco, per_category)
    report = {"stats": stats, "sigmas_given": dataset.sigmas_given, "pck_threshold": thresholds.box,
              "pck_pixels": list(thresholds.pixels), "pcutoff": thresholds.pcutoff,
              **thresholds.accuracy(predictions, dataset),
              "species": [dict(zip(("species", "family", "instances", "AP"), s)) for s in species],
              "families": [dict(zip(("family", "instances", "AP"), f)) for f in families],
              "skipped": dataset.skip_summary, "instances": len(predictions),
              "nms_removed": len(predictions) - len(results)}
    return results, report


def full_frame_report(predictor, dataset, thresholds, rank=0, world=1):
    """Every image of `dataset` run as an own photo without --boxes, the pose found matched to the
    nearest instance -> keypoint_accuracy, with how many instances a pose was matched to. Rank r
    runs images r, r + world, ..."""
    instances, paths = defaultdict(list), {}
    for r in dataset.records:
        instances[r["image_id"]].append(r["ann_id"])
        paths[r["image_id"]] = r["path"]
    photos = [{"id": i, "file_name": paths[i]} for i in sorted(paths)[rank::world]]
    with own_shard():
        poses = photo_poses(predictor, photos, boxes=None, whole=False, overlay=lambda *_: None)
    poses = sorted(all_gather_list(poses), key=lambda pose: pose["image_id"])  # as one process
    poses = match_instances(poses, dataset.coco, instances)
    return {**thresholds.accuracy(poses, dataset), "boxes": FULL_FRAME, "instances":
            len(dataset.records), "matched": len({p["ann_id"] for p in poses} - {None})}


def write_figures(model, dataset, count, out_dir, device, flip, amp, ckpt, names_on):
    """For the first `count` boxes: the image with prediction and ground truth, and the paper's
    Fig. 2 and Fig. 3 of the crop. Files: vis/<image id>_<ann id or det#>_*.png."""
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
        for name, figure in (("scoremaps", fig3), ("similarity", fig2)):
            if figure is not None:
                visualize.write_image(f"{stem}_{name}.png", figure)


def check_keypoints_match(ckpt_names, dataset_names, ann_file):
    if list(ckpt_names) != list(dataset_names):
        raise ValueError(
            f"{ann_file!r} defines {len(dataset_names)} keypoints {list(dataset_names)}, but the "
            f"checkpoint was trained on {len(ckpt_names)} keypoints {list(ckpt_names)}; evaluate "
            f"on an annotation file with the checkpoint's keypoints (same names, same order)")


def run_sigmas(ckpt, sigmas):
    """--sigmas if given (checked against the keypoint count), else the run's; None where the run
    had only the placeholder (it chose best.pt by pixel error): the json's own are read then, or
    the placeholder again, and dataset.sigmas_given says which."""
    K = len(ckpt["keypoint_names"])
    if sigmas is not None and len(sigmas) != K:
        raise ValueError(f"--sigmas: {len(sigmas)} values given, the checkpoint has {K} keypoints")
    if sigmas is not None:
        return sigmas
    return ckpt["sigmas"] if ckpt.get("selected_by", "val_AP") == "val_AP" else None


def evaluation_dataset(ckpt, ann, image_dir, sigmas, det_boxes=None, det_score_threshold=0.0):
    """The KeypointDataset to score: the checkpoint's sizes, normalisation, flip pairs, sigmas;
    ground-truth boxes, or the detections of `det_boxes` above the threshold."""
    run_args = ckpt.get("args", {})
    ann = ann or run_args.get("val_ann")
    image_dir = image_dir or run_args.get("val_images") or run_args.get("images")
    if not ann or not image_dir:
        raise ValueError("no annotation file / image directory given and none stored in the "
                         "checkpoint: pass --ann VAL_JSON --images DIR")
    cfg = ckpt["model_config"]
    boxes = load_detections(det_boxes, ann, det_score_threshold) if det_boxes else None
    try:
        dataset = KeypointDataset(ann, image_dir, train=False, inputs=cfg, boxes=boxes,
                                  sigmas=run_sigmas(ckpt, sigmas), flip_pairs=ckpt["flip_pairs"],
                                  reduced_decode=run_args.get("reduced_jpeg_decode", False))
    except ValueError:  # the checkpoint's pairs / sigmas do not fit: say why, if that is why
        names = read_keypoint_set(load_coco_json(ann), ann)["names"]
        check_keypoints_match(ckpt["keypoint_names"], names, ann)
        raise
    check_keypoints_match(ckpt["keypoint_names"], dataset.keypoint_names, ann)
    return dataset


def train_dataset(ckpt, sigmas):
    """--train-too: the run's --train-ann, scored as its val json is (ground-truth boxes)."""
    run_args = ckpt.get("args", {})
    if not run_args.get("train_ann"):
        raise ValueError("--train-too: the checkpoint stores no --train-ann (not made by "
                         "train.py?); score the train json with --ann TRAIN_JSON --images DIR")
    return evaluation_dataset(ckpt, run_args["train_ann"], run_args.get("images"), sigmas)


def flat(report):
    return {**report["stats"], **{k: v for k, v in report.items() if k != "stats"}}


def run_dataset(model, ckpt, args, flip, device, rank, world, out_dir):
    """Score a COCO keypoint json, with --train-too the run's train json beside it, each also on
    the full frame where asked; rank 0 writes metrics.json, figures, results.json (first json's)."""
    dataset = evaluation_dataset(ckpt, args.ann, args.images[0] if args.images else None,
                                 args.sigmas, args.det_boxes, args.det_score_threshold)
    sets = [dataset] + ([train_dataset(ckpt, args.sigmas)] if args.train_too else [])
    full_frame = (args.full_frame if args.full_frame is not None else
                  not (dataset.sigmas_given or args.det_boxes))
    predictor = Predictor.from_checkpoint(model, ckpt, flip, args.amp, device, args.batch_size)
    thresholds = Thresholds(args.pck_threshold, tuple(args.pck_pixels), args.pcutoff)
    start, reports, branch = time.time(), [], None
    for ds in sets:
        results, report = evaluate_dataset(
            model, ds, batch_size=args.batch_size, workers=args.workers, flip=flip, amp=args.amp,
            device=device, rank=rank, world=world, progress=rank == 0, thresholds=thresholds)
        if full_frame:  # every rank searches its share of the images
            full = full_frame_report(predictor, ds, thresholds, rank, world)
            if report is not None:
                report["full_frame"] = full
        reports.append((results, report))
    if ckpt["model_config"]["method"] == "promptpose" and not args.det_boxes:
        branch = branch_diagnostics(model, dataset, batch_size=args.batch_size,
                                    workers=args.workers, device=device, rank=rank, world=world)
    if rank != 0:
        return None
    (results, report), train = reports[0], reports[1:]
    report.update({"train": flat(train[0][1])} if train else {}, language_branch=branch)
    write_json(os.path.join(out_dir, "results.json"), results)
    write_json(os.path.join(out_dir, "metrics.json"), {
        "checkpoint": os.path.abspath(args.checkpoint), "ann": dataset.ann_file,
        "images": dataset.image_dir, "boxes": os.path.abspath(args.det_boxes) if args.det_boxes
        else f"ground truth: {GT_BOXES}", "flip_test": flip, "world_size": world,
        "sigmas": [float(s) for s in dataset.sigmas], "keypoint_score": KEYPOINT_SCORE,
        **flat(report)}, indent=1)
    print(f"{len(results)} instances from {dataset.ann_file}" + (" and the run's train json" if
          train else "") + f" in {time.time() - start:.1f}s (flip test {'on' if flip else 'off'}, "
          f"full frame {'on' if full_frame else 'off'}, amp {args.amp}, batch {args.batch_size}, "
          f"{world} process(es))")
    print(format_report(report))
    if branch:
        print("\n".join(["", *format_branch_diagnostics(branch)]))
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


def run_mode(mode, model, ckpt, args, flip, device, rank, world, out_dir):
    if mode == "dataset":
        return run_dataset(model, ckpt, args, flip, device, rank, world, out_dir)
    if rank == 0 and mode == "photos":
        run_photos(model, ckpt, args, flip, device, out_dir)
    elif rank == 0:
        run_video(model, ckpt, args, flip, device, out_dir)
    return None


def main(args):
    mode = check_flag_combination(args)
    rank, _, world, device = init_distributed(args.device)
    ckpt = load_checkpoint(args.checkpoint)
    flip = settings_from_run(args, ckpt)
    model = prepare_model(ckpt, device, args.compile)
    out_dir = on_rank0(claim_output_dir, args.output_dir or os.path.join(
        os.path.dirname(os.path.abspath(args.checkpoint)), "eval"))
    try:
        report = run_mode(mode, model, ckpt, args, flip, device, rank, world, out_dir)
    except BaseException:  # bad --boxes, --images, --video, ...; Ctrl-C, SIGTERM of a video run
        if rank == 0:
            release_output_dir(out_dir)
        raise
    cleanup()
    return report


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args,
            on_interrupt="interrupted: the files written so far are complete; nothing half-written")
