"""Tests of evaluate.py and visualize.py: metrics against hand-computed values (PCK, pixel
errors, PCK at pixels, the error with p-cutoff, matching a found pose to its instance), ground
truth in -> perfect scores out (ground-truth and detected boxes), scores clipped where written
but not where rescored, and the entry point as a user runs it (checkpoint sigmas, any working
directory, outputs never overwritten, --det-boxes, data without sigmas reported in pixels first
with --train-too and the full frame, the language-branch diagnostics, one-line errors). Own
photos and videos: tests/test_predict.py. A tiny synthetic AP-10K and a small random model keep
it to seconds on a CPU."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import evaluate
import metrics
from annotations import index_coco
import predict
import visualize
from checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from annotations import load_detections
from dataset import KeypointDataset
from keypoints import AP10K_SIGMAS, keypoint_sides
from model import build_model, default_config
from synthetic import generate

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(args, cwd=ROOT, check=True):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *args], cwd=cwd,
                          capture_output=True, text=True, env=ENV, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[-1], (needle, proc.stderr)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    generate(str(out), n_train=1, n_val=6, seed=5)
    return {"val": str(out / "annotations" / "ap10k-val-split1.json"), "images": str(out / "data")}


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    """A small random PromptPose saved as train.py saves it, with unusual OKS sigmas (as a run
    trained with --sigmas) so that a test can tell whose sigmas were used."""
    cfg = default_config("clip-rn50", "promptpose", small=True, image_size=(64, 64))
    ds = KeypointDataset(data["val"], data["images"], train=False, inputs=cfg)
    torch.manual_seed(0)
    model = build_model(cfg, ds.keypoint_names, ds.prompt_texts)
    info = {"flip_pairs": ds.flip_pairs, "skeleton": ds.skeleton, "sigmas": AP10K_SIGMAS * 8}
    args = {"val_ann": os.path.abspath(data["val"]), "images": os.path.abspath(data["images"])}
    path = str(tmp_path_factory.mktemp("run") / "final.pt")
    save_checkpoint(path, make_checkpoint(model, info, args, 0, -1.0, "0" * 40))
    return path


@pytest.fixture(scope="module")
def no_sigmas(data, tmp_path_factory):
    """The synthetic data as a DeepLabCut project reads: keypoint names of no known set, no OKS
    sigmas in the json; a small random PromptPose saved as train.py saves such a run (best.pt
    by pixel error), its train json stored."""
    out = tmp_path_factory.mktemp("no_sigmas")
    paths = {}
    for split in ("train", "val"):
        ann = json.load(open(data["val"].replace("-val-", f"-{split}-")))
        for cat in ann["categories"]:
            cat["keypoints"] = [f"spot{k}" for k in range(17)]
        paths[split] = str(out / f"{split}.json")
        json.dump(ann, open(paths[split], "w"))
    cfg = default_config("clip-rn50", "promptpose", small=True, image_size=(64, 64))
    with pytest.warns(UserWarning, match="unknown keypoint set"):
        ds = KeypointDataset(paths["val"], data["images"], train=False, inputs=cfg)
    assert not ds.sigmas_given
    torch.manual_seed(0)
    model = build_model(cfg, ds.keypoint_names, ds.prompt_texts)
    info = {"flip_pairs": ds.flip_pairs, "skeleton": ds.skeleton, "sigmas": ds.sigmas,
            "selected_by": "val_RMSE_px"}
    args = {"train_ann": paths["train"], "val_ann": paths["val"],
            "images": os.path.abspath(data["images"])}
    path = str(out / "run" / "final.pt")
    os.makedirs(out / "run")
    save_checkpoint(path, make_checkpoint(model, info, args, 0, -1.0, "0" * 40))
    return {"checkpoint": path, **paths}


def copy_checkpoint(path, directory, **changes):
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, "final.pt")
    if changes:
        save_checkpoint(target, {**load_checkpoint(path), **changes})
    else:
        shutil.copy(path, target)
    return target


def in_process_ap(ckpt_path, data, sigmas):
    ckpt = load_checkpoint(ckpt_path)
    dataset = evaluate.evaluation_dataset(ckpt, data["val"], data["images"], sigmas)
    _, report = evaluate.evaluate_dataset(
        model_from_checkpoint(ckpt), dataset, batch_size=32, workers=0, flip=True, amp="none",
        device=torch.device("cpu"))
    return report["stats"]["AP"]


# ----------------------------------------------------------------------------- OKS-NMS
def test_oks_nms_hand_made_case():
    sigmas = np.array([0.1, 0.1])        # (2 sigma)^2 = 0.04 per keypoint
    base = np.array([[10.0, 10.0, 1.0], [20.0, 20.0, 1.0]])
    shift = np.array([1.0, 0.0, 0.0])
    poses = np.stack([base, base + 0.5 * shift, base + shift, base + 10 * shift])
    scores = np.array([0.8, 0.9, 0.7, 0.95])
    areas = np.full(4, 100.0)
    # OKS = exp(-d^2 / 0.04 / area / 2): d = 0.5 -> exp(-0.03125) = 0.969 (> 0.9, a duplicate);
    # d = 1 -> exp(-0.125) = 0.882 (kept); with areas 100 and 300 the scale is their mean 200
    overlap = metrics.oks_overlap(poses[1], poses[[0, 2]], 100.0, areas[[0, 2]], sigmas)
    assert overlap == pytest.approx([np.exp(-0.03125)] * 2)
    assert metrics.oks_overlap(poses[0], poses[[2]], 100.0, np.array([300.0]), sigmas) == \
        pytest.approx([np.exp(-1 / 0.04 / 200 / 2)])
    # greedy by score: 3 (far from all) and 1 stay; 1 removes 0 and 2 (0.5 px away each)
    assert metrics.oks_nms(poses, scores, areas, sigmas) == [3, 1]
    assert metrics.oks_nms(poses[[0, 2]], scores[[0, 2]], areas[[0, 2]], sigmas) == [0, 1]
    # per image: the same duplicate in another image is not compared across images
    results = [{"image_id": image_id, "keypoints": pose.ravel().tolist(), "score": float(s),
                "scale": [10.0, 10.0]} for image_id in (1, 2) for pose, s in zip(poses, scores)]
    kept = metrics.nms_per_image(results, sigmas)
    assert [(r["image_id"], r["score"]) for r in kept] == [(1, 0.9), (1, 0.95), (2, 0.9), (2, 0.95)]


def test_rescoring_as_mmpose():
    maxvals = np.array([[0.9, 0.5, 0.1, 0.2], [0.1, 0.05, 0.0, 0.2]])
    # mean of the maxima above 0.2 (strictly), times the box score; none above: 0
    assert predict.instance_scores(maxvals, [0.5, 1.0]) == pytest.approx([0.5 * 0.7, 0.0])


# ----------------------------------------------------------------------------- PCK / pixel error
def test_pck_and_pixel_error_hand_computed():
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": 200, "height": 200, "file_name": "a.jpg"}],
        "categories": [{"id": 1, "name": "a", "keypoints": ["left_eye", "nose"]}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 100, 50], "iscrowd": 0,
             "area": 5000, "num_keypoints": 2, "keypoints": [50, 30, 2, 60, 20, 1]},
            # reaches past the image bottom: the box is clipped to 40 x 20 -> normaliser 40
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [150, 180, 40, 60], "iscrowd": 0,
             "area": 2400, "num_keypoints": 1, "keypoints": [160, 190, 2, 0, 0, 0]}]}
    coco.createIndex()
    results = [
        {"ann_id": 1, "image_id": 1, "keypoints": [53, 34, 0.9, 90, 20, 0.9]},    # errors 5, 30
        {"ann_id": 2, "image_id": 1, "keypoints": [160, 199, 0.9, 5, 5, 0.1]},    # 9; unlabeled
        {"ann_id": None, "image_id": 1, "keypoints": [0, 0, 1, 0, 0, 1]}]            # a detection
    acc = metrics.keypoint_accuracy(results, coco, ["left_eye", "nose"], 0.2)
    # left_eye: 5 / max(100, 50) = 0.05 < 0.2 correct; 9 / 40 = 0.225 wrong (unclipped 9 / 60
    # would pass) -> 0.5. nose: 30 / 100 = 0.3 wrong -> 0. PCK = mean over keypoints (mmpose)
    assert acc["per_keypoint"]["left_eye"]["pck"] == pytest.approx(0.5)
    assert acc["per_keypoint"]["nose"]["pck"] == pytest.approx(0.0)
    assert acc["pck"] == pytest.approx(0.25)
    assert acc["rmse_px"] == pytest.approx(np.sqrt((25 + 900 + 81) / 3))
    assert acc["mean_error_px"] == pytest.approx((5 + 30 + 9) / 3)
    assert acc["per_keypoint"]["left_eye"]["rmse_px"] == pytest.approx(np.sqrt((25 + 81) / 2))
    assert acc["per_keypoint"]["nose"] == {"labeled": 1, "pck": 0.0, "rmse_px": 30.0,
                                           "mean_error_px": 30.0}
    # the threshold is strict and per the flag: at 0.3, 0.225 passes and 0.3 does not
    assert metrics.keypoint_accuracy(results, coco, ["left_eye", "nose"], 0.3)["pck"] == \
        pytest.approx(0.5)
    assert metrics.keypoint_accuracy(results[2:], coco, ["left_eye", "nose"], 0.2)["pck"] is None

    # PCK at pixels (strict): errors 5 and 9 (left_eye), 30 (nose); 5 px passes none, 10 px two
    # of the three labeled keypoints (pooled over keypoints, as the pixel errors are)
    acc = metrics.keypoint_accuracy(results, coco, ["left_eye", "nose"], 0.2, (5, 10))
    assert (acc["pck_5px"], acc["pck_10px"]) == pytest.approx((0.0, 2 / 3))
    assert acc["per_keypoint"]["left_eye"]["pck_10px"] == 1.0
    assert acc["per_keypoint"]["nose"]["pck_10px"] == 0.0
    # with p-cutoff 0.5: the nose (error 30) scores 0.3 and drops out; a score equal to the
    # cutoff stays (DeepLabCut keeps likelihood >= pcutoff); the unlabeled keypoint never counts
    results[0]["keypoints"][5], results[1]["keypoints"][2] = 0.3, 0.5
    acc = metrics.keypoint_accuracy(results, coco, ["left_eye", "nose"], 0.2, (), pcutoff=0.5)
    assert acc["pcutoff_rmse_px"] == pytest.approx(np.sqrt((25 + 81) / 2))
    assert acc["pcutoff_mean_error_px"] == pytest.approx(7.0)
    assert acc["pcutoff_kept"] == pytest.approx(2 / 3) and acc["rmse_px"] == pytest.approx(
        np.sqrt((25 + 900 + 81) / 3))                                   # the plain error keeps all
    assert acc["per_keypoint"]["nose"]["pcutoff_kept"] == 0.0
    assert np.isnan(acc["per_keypoint"]["nose"]["pcutoff_rmse_px"])
    assert metrics.keypoint_accuracy(results, coco, ["left_eye", "nose"], 0.2, (),
                                     pcutoff=0.95)["pcutoff_kept"] == 0.0


def test_found_pose_goes_to_the_nearest_labeled_instance():
    truths = np.array([[[10.0, 10.0], [20.0, 20.0]], [[100.0, 100.0], [0.0, 0.0]]])
    labeled = np.array([[True, True], [True, False]])
    # to instance 0: distances 90 * sqrt(2) and 80 * sqrt(2) -> mean 85 sqrt(2) = 120.2; to
    # instance 1 only its labeled keypoint counts: 0 (its unlabeled (0, 0) would make it 141)
    pose = np.array([[100.0, 100.0], [100.0, 100.0]])
    assert metrics.nearest_instance(pose, truths, labeled) == 1
    assert metrics.nearest_instance(np.full((2, 2), 12.0), truths, labeled) == 0
    assert metrics.nearest_instance(pose, truths, np.zeros((2, 2), bool)) is None
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "width": 200, "height": 200}],
                    "categories": [{"id": 1, "name": "a", "keypoints": ["p", "q"]}],
                    "annotations": [
                        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 30, 30],
                         "keypoints": [10, 10, 2, 20, 20, 2]},
                        {"id": 8, "image_id": 1, "category_id": 1, "bbox": [90, 90, 20, 20],
                         "keypoints": [100, 100, 2, 0, 0, 0]}]}
    coco.createIndex()
    poses = [{"image_id": 1, "keypoints": [99, 101, 0.9, 98, 99, 0.9]}]
    assert metrics.match_instances(poses, coco, {1: [7, 8]})[0]["ann_id"] == 8
    assert metrics.match_instances(poses, coco, {1: [7]})[0]["ann_id"] == 7


# ----------------------------------------------------------------------------- ground truth in
def crop_key(image):
    return hashlib.sha1(np.ascontiguousarray(image, np.float32).tobytes()).hexdigest()


class GroundTruthModel(torch.nn.Module):
    """Returns exact Gaussian heatmaps (peak 1) at the ground truth of every crop of `dataset`,
    looked up by the crop's pixels; zeros for a crop it has not seen."""

    def __init__(self, dataset, sigma=2.0):
        super().__init__()
        h, w = dataset.heatmap_size
        ys, xs = np.mgrid[0:h, 0:w]
        self.shape, self.table = (len(dataset.keypoint_names), h, w), {}
        for i in range(len(dataset)):
            item = dataset[i]
            kp, seen = item["keypoints"], item["target_weight"] > 0
            d2 = (xs - kp[:, 0, None, None]) ** 2 + (ys - kp[:, 1, None, None]) ** 2
            self.table[crop_key(item["image"])] = (np.exp(-d2 / (2 * sigma ** 2))
                                                   * seen[:, None, None]).astype(np.float32)

    def forward(self, images):
        zeros = np.zeros(self.shape, np.float32)
        return {"heatmaps": torch.stack([torch.from_numpy(self.table.get(crop_key(im), zeros))
                                         for im in images.cpu().numpy()])}


def test_ground_truth_in_gives_perfect_scores(data, tmp_path):
    """A model that outputs the ground truth scores AP 1.0, PCK 1.0 and sub-pixel error, with
    ground-truth boxes and with detected boxes, although the json holds an instance that
    cannot be predicted (zero-area box): it is reported and left out of the scored ground truth."""
    ann = json.load(open(data["val"]))
    broken = dict(ann["annotations"][0], id=9999, bbox=[5.0, 5.0, 0.0, 0.0])
    ann["annotations"].append(broken)
    path = tmp_path / "val.json"
    json.dump(ann, open(path, "w"))
    size = dict(image_size=(256, 256), heatmap_size=(256, 256))   # stride 1: decoding error tiny
    dataset = KeypointDataset(str(path), data["images"], train=False, inputs=size)
    model = GroundTruthModel(dataset)
    common = dict(batch_size=4, workers=0, flip=False, amp="none", device=torch.device("cpu"))
    results, report = evaluate.evaluate_dataset(model, dataset, **common)
    assert "zero-area box: 1" in report["skipped"]
    assert report["stats"]["AP"] == pytest.approx(1.0) and report["stats"]["AR"] == pytest.approx(1.0)
    assert report["pck"] == pytest.approx(1.0) and report["rmse_px"] < 0.5
    assert report["nms_removed"] == 0 and len(results) == len(dataset) == len(ann["annotations"]) - 1
    scores = {r["ann_id"]: r["score"] for r in results}   # the maxima of Gaussians off the grid
    assert all(0.9 < s <= 1 for s in scores.values())
    assert "PCK@0.2 1.000" in evaluate.format_report(report)

    # detections: the instances' boxes (as cropped: far corner x + w - 1) with score 0.9, one
    # low-scored box elsewhere, one below the threshold; every image id must be one of the json's
    dets = [{"image_id": r["image_id"], "category_id": r["category_id"], "bbox": r["box"].tolist(),
             "score": 0.9} for r in dataset.records]
    dets += [{"image_id": dets[0]["image_id"], "category_id": dets[0]["category_id"],
              "bbox": [0, 0, 30, 30], "score": 0.3},
             {"image_id": dets[0]["image_id"], "category_id": dets[0]["category_id"],
              "bbox": [40, 40, 30, 30], "score": 0.05}]
    json.dump(dets, open(tmp_path / "dets.json", "w"))
    boxes = load_detections(str(tmp_path / "dets.json"), str(path), score_threshold=0.1)
    detected = KeypointDataset(str(path), data["images"], train=False, boxes=boxes, inputs=size)
    results, report = evaluate.evaluate_dataset(model, detected, **common)
    assert len(results) == len(dets) - 1 and all(r["ann_id"] is None for r in results)
    rescored = sorted(r["score"] for r in results)     # box score x keypoint score; unseen crop: 0
    assert rescored[0] == 0 and rescored[1:] == pytest.approx(sorted(0.9 * s for s in scores.values()))
    assert report["stats"]["AP"] == pytest.approx(1.0) and report["pck"] is None


class OvershootingModel(torch.nn.Module):
    """A model whose heatmap maxima leave [0, 1] (as regressed Gaussians do): the ground-truth
    maps x 1.1 - 0.05, so a labeled keypoint peaks at ~1.05 and an unlabeled one at -0.05."""

    def __init__(self, truth):
        super().__init__()
        self.truth = truth

    def forward(self, images):
        return {"heatmaps": 1.1 * self.truth(images)["heatmaps"] - 0.05}


def test_scores_clipped_where_written_raw_where_rescored(data):
    """Keypoint scores are written clipped to [0, 1] (results.json, photos, videos); the
    instance score keeps mmpose's rescoring of the raw maxima, so AP does not move."""
    size = dict(image_size=(256, 256), heatmap_size=(256, 256))
    dataset = KeypointDataset(data["val"], data["images"], train=False, inputs=size)
    common = dict(batch_size=4, workers=0, flip=False, amp="none", device=torch.device("cpu"))
    exact, report = evaluate.evaluate_dataset(GroundTruthModel(dataset), dataset, **common)
    over, over_report = evaluate.evaluate_dataset(OvershootingModel(GroundTruthModel(dataset)),
                                                  dataset, **common)
    scores = np.array([np.reshape(r["keypoints"], (-1, 3))[:, 2] for r in over])
    assert scores.min() == 0.0 and scores.max() == 1.0                 # -0.05 and ~1.05 clipped
    assert max(r["score"] for r in over) > 1.0                         # rescored from raw maxima
    assert over_report["stats"]["AP"] == report["stats"]["AP"] == pytest.approx(1.0)

    class Fixed:  # stands in for predict.Predictor: a pose with scores outside [0, 1]
        def keypoints(self, images, boxes, flip=None):
            return np.array([[[5.0, 5.0, 1.3], [6.0, 6.0, -0.2], [7.0, 7.0, 0.5]]] * len(boxes))

    pose = predict.find_poses(Fixed(), [np.zeros((20, 20, 3), np.uint8)], [[([0, 0, 20, 20], 1.0)]])
    assert pose[0][0]["keypoints"][:, 2].tolist() == [1.0, 0.0, 0.5]
    assert pose[0][0]["score"] == pytest.approx((1.3 + 0.5) / 2)       # raw maxima above 0.2


# ----------------------------------------------------------------------------- the entry point
def test_checkpoint_sigmas_any_cwd_and_outputs_kept(checkpoint, data, tmp_path):
    """evaluate.py CKPT from another directory: the run's sigmas (the AP train.py logged),
    outputs beside the checkpoint; a second evaluation (--sigmas) goes to eval-2, the first
    stays; no progress bar when stderr is not a terminal."""
    ckpt = copy_checkpoint(checkpoint, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run([ckpt, "--workers", "0"], cwd=elsewhere)
    first = json.load(open(tmp_path / "run" / "eval" / "metrics.json"))
    run_sigmas = load_checkpoint(ckpt)["sigmas"]
    assert first["sigmas"] == pytest.approx(run_sigmas)
    assert first["AP"] == in_process_ap(ckpt, data, run_sigmas)
    assert first["AP"] != in_process_ap(ckpt, data, AP10K_SIGMAS.tolist())   # sigmas matter here
    assert "PCK@0.2" in proc.stdout and "RMSE" in proc.stdout and "\r" not in proc.stderr
    assert 0 <= first["pck"] <= 1 and first["rmse_px"] > 0 and len(first["per_keypoint"]) == 17
    # data with sigmas: today's report (AP first), ground-truth boxes only (no full-frame search)
    assert proc.stdout.index("| AP |") < proc.stdout.index("PCK@0.2")
    assert "full frame |" not in proc.stdout
    assert first["sigmas_given"] and "full_frame" not in first and "train" not in first
    assert 0 <= first["pck_5px"] <= first["pck_10px"] <= 1 and first["pcutoff"] == 0.4
    # the language branch of a PromptPose: each measurement beside its chance level
    branch = first["language_branch"]
    grid = 64 // 32                                            # the 64 px crop's feature grid
    assert branch["score_map_hit"]["chance"] == pytest.approx(1 / grid ** 2)
    assert 1 / 17 <= branch["semantic_top1"]["chance"] <= 1
    for m in ("semantic_top1", "score_map_hit"):
        assert 0 <= branch[m]["value"] <= 1 and len(branch[m]["per_keypoint"]) == 17
        labeled = sum(v["labeled"] for v in branch[m]["per_keypoint"].values())
        assert labeled == sum(v["labeled"] for v in first["per_keypoint"].values())
    assert "semantic top-1" in proc.stdout and "chance" in proc.stdout

    sigmas = ",".join(str(s) for s in AP10K_SIGMAS)
    proc = run([ckpt, "--workers", "0", "--sigmas", sigmas, "--pck-threshold", "0.5"], cwd=elsewhere)
    assert str(tmp_path / "run" / "eval-2") in proc.stdout
    second = json.load(open(tmp_path / "run" / "eval-2" / "metrics.json"))
    assert second["sigmas"] == pytest.approx(AP10K_SIGMAS.tolist()) and second["pck_threshold"] == 0.5
    assert second["AP"] == in_process_ap(ckpt, data, AP10K_SIGMAS.tolist())
    assert json.load(open(tmp_path / "run" / "eval" / "metrics.json")) == first

    help_text = " ".join(run(["--help"]).stdout.split())
    assert "(default: 0.2)" in help_text and "else 32)" in help_text
    proc = run([ckpt, "--sigmas", "0.1,0.2"], check=False)
    assert_one_line_error(proc, "--sigmas", "17")
    proc = run([ckpt, "--train-too"], check=False)     # a checkpoint that stores no train json
    assert_one_line_error(proc, "--train-too", "--train-ann")


def test_det_boxes_and_no_flip_pairs(checkpoint, data, tmp_path):
    """--det-boxes: one prediction per detection above --det-score-threshold, scored against
    the json; no PCK (no instance per box). A checkpoint without flip pairs: no flip test."""
    ckpt = copy_checkpoint(checkpoint, tmp_path / "run", flip_pairs=[])
    anns = json.load(open(data["val"]))["annotations"]
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 0.8} for a in anns]
    dets.append(dict(dets[0], bbox=[0, 0, 20, 20], score=0.01))
    json.dump(dets, open(tmp_path / "dets.json", "w"))
    out = tmp_path / "out"
    proc = run([ckpt, "--det-boxes", str(tmp_path / "dets.json"), "--det-score-threshold",
                "0.1", "--workers", "0", "--output-dir", str(out), "--vis", "1"])
    assert "flip test off" in proc.stdout
    results = json.load(open(out / "results.json"))
    assert 0 < len(results) <= len(anns) and all(r["ann_id"] is None for r in results)
    assert all(0 <= r["score"] <= 0.8 for r in results)
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["boxes"] == str(tmp_path / "dets.json") and metrics["pck"] is None
    assert metrics["flip_test"] is False and "AP" in metrics
    assert any(f.endswith("_overlay.png") for f in os.listdir(out / "vis"))


def test_no_sigmas_reported_in_pixels_with_train_and_full_frame(no_sigmas, tmp_path):
    """Data without OKS sigmas (a DeepLabCut project): the pixel errors lead the report, AP
    follows marked as resting on a placeholder; --train-too scores the run's train json beside
    val, and the full frame (the model's own search, on by default here) beside the
    ground-truth boxes, in the printed report and in metrics.json."""
    out = tmp_path / "out"
    proc = run([no_sigmas["checkpoint"], "--train-too", "--workers", "0", "--output-dir", str(out)])
    text = proc.stdout
    assert text.index("RMSE px") < text.index("PCK@5 px") < text.index("| AP |")
    assert "placeholder OKS sigma" in text and "Per body part" in text and "| spot16 |" in text
    for column in ("val, ground-truth boxes", "val, full frame", "train, ground-truth boxes",
                   "train, full frame"):
        assert column in text
    m = json.load(open(out / "metrics.json"))
    assert m["sigmas_given"] is False and m["pck_pixels"] == [5, 10] and m["pcutoff"] == 0.4
    val = json.load(open(no_sigmas["val"]))
    train = json.load(open(no_sigmas["train"]))
    assert m["instances"] == len(val["annotations"])
    assert m["train"]["instances"] == len(train["annotations"])
    for r in (m, m["train"], m["full_frame"], m["train"]["full_frame"]):
        assert r["rmse_px"] > 0 and 0 <= r["pck_5px"] <= r["pck_10px"] <= 1
        assert 0 <= r["pcutoff_kept"] <= 1 and set(r["per_keypoint"]["spot3"]) >= {
            "rmse_px", "mean_error_px", "pck_5px", "pck_10px", "pcutoff_rmse_px"}
    # one pose per image in the full frame, each matched to an instance of its image
    assert m["full_frame"]["matched"] == len(val["images"]) <= m["full_frame"]["instances"]
    assert "ground truth: the json's" in m["boxes"] and "nearest" in m["full_frame"]["boxes"]
    assert "heatmap maximum" in m["keypoint_score"] and m["language_branch"]["semantic_top1"]
    results = json.load(open(out / "results.json"))
    assert all(0 <= v <= 1 for r in results for v in r["keypoints"][2::3])

    proc = run([no_sigmas["checkpoint"], "--no-full-frame", "--pck-pixels", "3", "--pcutoff",
                "0.2", "--workers", "0", "--output-dir", str(tmp_path / "two")])
    m = json.load(open(tmp_path / "two" / "metrics.json"))
    assert "full_frame" not in m and "pck_3px" in m and "pck_5px" not in m and m["pcutoff"] == 0.2
    assert "RMSE px, p >= 0.2" in proc.stdout and "full frame |" not in proc.stdout
    # train.py's log after a validation: one line, pixels first
    ckpt = load_checkpoint(no_sigmas["checkpoint"])
    with pytest.warns(UserWarning, match="unknown keypoint set"):
        dataset = evaluate.evaluation_dataset(ckpt, None, None, None)
    _, report = evaluate.evaluate_dataset(model_from_checkpoint(ckpt), dataset, batch_size=8,
                                          workers=0, flip=False, amp="none",
                                          device=torch.device("cpu"))
    line = evaluate.format_report(report, detail=False)
    assert "\n" not in line and line.startswith("RMSE ") and "placeholder" in line


def test_det_boxes_without_sigmas_report_no_pixel_table(no_sigmas, data, tmp_path):
    """Detected boxes on data without OKS sigmas (a DeepLabCut project, where the pixel errors
    lead): no box belongs to an instance, so there are no pixel errors; the report says in one
    line that they need ground-truth boxes instead of a table of '-' headed "ground-truth
    boxes", and AP follows without pointing to pixel errors "above"; in a log, one line."""
    ckpt = load_checkpoint(no_sigmas["checkpoint"])
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 0.8} for a in json.load(open(no_sigmas["val"]))["annotations"]]
    json.dump(dets, open(tmp_path / "dets.json", "w"))
    with pytest.warns(UserWarning, match="unknown keypoint set"):
        dataset = evaluate.evaluation_dataset(ckpt, no_sigmas["val"], data["images"], None,
                                              str(tmp_path / "dets.json"))
    _, report = evaluate.evaluate_dataset(model_from_checkpoint(ckpt), dataset, batch_size=8,
                                          workers=0, flip=False, amp="none",
                                          device=torch.device("cpu"))
    assert not report["sigmas_given"] and report["rmse_px"] is None
    text = evaluate.format_report(report)
    assert "| ground-truth boxes |" not in text and "RMSE px" not in text
    assert "| - |" not in text and "pixel errors above" not in text
    assert text.index("need ground-truth boxes") < text.index("| AP |")
    assert "placeholder OKS sigma" in text
    line = evaluate.format_report(report, detail=False)
    assert "\n" not in line and "need ground-truth boxes" in line and "placeholder" in line


def test_flag_combinations_refused_with_one_line():
    for flags, message in ((["--train-too", "--ann", "a.json"], "leave out --ann"),
                           (["--full-frame", "--det-boxes", "d.json"], "leave out --det-boxes"),
                           (["--train-too", "--images", "photos/"], "--train-too and --full-frame"),
                           (["--pck-pixels", "5,0"], "--pck-pixels: thresholds are positive"),
                           (["--whole-frame"], "--whole-frame is for own photos")):
        with pytest.raises(ValueError, match=message):
            evaluate.check_flag_combination(evaluate.get_args_parser().parse_args(["c.pt", *flags]))
    # --pcutoff serves the error with p-cutoff as well as the overlays: accepted everywhere
    for flags in (["--pcutoff", "0.6"], ["--pcutoff", "0.6", "--images", "p/"]):
        evaluate.check_flag_combination(evaluate.get_args_parser().parse_args(["c.pt", *flags]))


def test_bad_input_gives_one_line(checkpoint, data, tmp_path):
    """A truncated JPEG is refused with one line: among own photos, and inside a data loader
    worker on the dataset path (the worker's traceback is not shown); a json with other
    keypoints than the checkpoint's is named."""
    images = tmp_path / "images"
    shutil.copytree(data["images"], images)
    victim = json.load(open(data["val"]))["images"][0]["file_name"]
    content = (images / victim).read_bytes()
    (images / victim).write_bytes(content[:len(content) // 2])
    proc = run([checkpoint, "--images", str(images / victim), "--output-dir", str(tmp_path / "o")],
               check=False)
    assert_one_line_error(proc, "truncated JPEG", victim)
    proc = run([checkpoint, "--images", str(images), "--ann", data["val"], "--workers", "1",
                "--output-dir", str(tmp_path / "o")], check=False)
    assert_one_line_error(proc, "truncated JPEG", victim)
    ann = json.load(open(data["val"]))
    for cat in ann["categories"]:
        cat["keypoints"] = cat["keypoints"][:16]
        cat["skeleton"] = [s for s in cat["skeleton"] if max(s) <= 16]
    for a in ann["annotations"]:
        a["keypoints"] = a["keypoints"][:48]
    json.dump(ann, open(tmp_path / "sixteen.json", "w"))
    proc = run([checkpoint, "--ann", str(tmp_path / "sixteen.json"), "--images", data["images"]],
               check=False)
    assert_one_line_error(proc, "sixteen.json", "16 keypoints", "17 keypoints")


# ----------------------------------------------------------------------------- figures
def test_sides_and_limb_colours():
    pairs = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    names = ["L_Eye", "R_Eye", "eyeR", "eyeL", "Eye_Right", "Eye_Left", "leftear", "rightear",
             "forelegL1", "forelegR1", "nose"]
    assert keypoint_sides(names, pairs) == [
        "left", "right", "right", "left", "right", "left", "left", "right", "left", "right", "centre"]
    # a left limb, a right limb and a centre limb in their own colours; the legend below
    image = np.zeros((200, 300, 3), np.uint8)
    pose = np.array([[20, 50, 0.9], [280, 50, 0.9], [150, 50, 0.9], [150, 190, 0.9]])
    sides = ["left", "right", "centre", "centre"]
    out = visualize.overlay(image, [pose], [[0, 2], [1, 2], [2, 3]], sides, 0.2)
    assert out.shape[0] > 200 and (out[200:] == 255).any()                # the legend strip
    assert tuple(out[50, 80]) == visualize.SIDE_COLOURS["left"]
    assert tuple(out[50, 220]) == visualize.SIDE_COLOURS["right"]
    assert tuple(out[120, 150]) == visualize.SIDE_COLOURS["centre"]
    hidden = visualize.overlay(image, [pose * [1, 1, 0.1]], [[0, 2]], sides, 0.2)
    assert not hidden[:200].any()                                          # below threshold: not drawn


def test_paper_figures_and_curves(tmp_path):
    names = [f"keypoint_{i}" for i in range(5)]
    similarity = np.eye(5) * 0.5 + 0.1
    visible = np.array([True, True, False, True, True])
    fig2 = visualize.similarity_figure(similarity, names, visible)
    fig2_all = visualize.similarity_figure(similarity, names, np.ones(5, bool))
    assert fig2.shape[0] > fig2_all.shape[0]                               # the masked-row note
    fig3 = visualize.score_map_figure(np.zeros((64, 64, 3), np.uint8),
                                      np.random.default_rng(0).normal(size=(5, 4, 4)), names)
    assert fig3.ndim == 3 and fig3.shape[1] > 5 * 64
    records = [{"epoch": e, "loss": 1 / (e + 1), "pred": 0.01 / (e + 1), "pixel": 0.0,
                "semantic": 2 - 0.1 * e, "lr": 5e-4} for e in range(6)]
    for r in records[1::2]:
        r.update(val_AP=0.1 * r["epoch"], val_PCK=0.5, val_RMSE_px=3.0)
    visualize.plot_training_curves(records, str(tmp_path / "curves.png"))
    curves = cv2.imread(str(tmp_path / "curves.png"))
    assert curves is not None and curves.shape[1] == 4 * 320                # 7 panels, 4 a row
    assert os.listdir(tmp_path) == ["curves.png"]                          # no temporary left
    with pytest.raises(ValueError, match="no loss or metric"):
        visualize.plot_training_curves([{"epoch": 0}], str(tmp_path / "x.png"))


def test_species_counts_and_crowded_images_are_what_cocoeval_scores():
    """The per-species 'instances' count what COCOeval scores (not num_keypoints 0, not crowd);
    an image with more than 20 scored instances (pycocotools' maxDets) is warned about."""
    K = len(AP10K_SIGMAS)
    kps = [v for k in range(K) for v in (10.0 + 3 * k, 20.0 + 2 * k, 2)]
    ann = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 80, 60], "area": 4800.0, "iscrowd": 0,
           "num_keypoints": K, "keypoints": kps}
    anns = [dict(ann, id=i + 1) for i in range(21)] + [dict(ann, id=30, num_keypoints=0),
                                                       dict(ann, id=31, iscrowd=1)]
    coco = index_coco({"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
                       "annotations": anns, "categories": [{"id": 1, "name": "dog",
                                                           "supercategory": "Canidae"}]})
    results = [{"image_id": 1, "category_id": 1, "keypoints": kps, "score": 1.0}] * 21
    with pytest.warns(UserWarning, match=r"1 image\(s\) hold more than 20 scored instances \(up to 21\)"):
        stats, per_category = metrics.coco_keypoint_eval(coco, results, AP10K_SIGMAS)
    assert stats["AP"] < 1.0
    species, families = metrics.group_table(coco, per_category)
    assert species[0][2] == 21 and families[0][1] == 21
