"""End-to-end tests of the entry points: train.py and evaluate.py as a user runs them.

Everything runs on a tiny synthetic AP-10K (generated here) with the small architecture from
random initialisation, so it takes seconds per run on a CPU."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dataset import KeypointDataset  # noqa: E402
from evaluate import coco_keypoint_eval, load_checkpoint  # noqa: E402
from synthetic import generate  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def run(args, cwd=ROOT, check=True, env=ENV, timeout=600):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    generate(str(out), n_train=48, n_val=12, seed=3)
    return {"train": str(out / "annotations" / "ap10k-train-split1.json"),
            "val": str(out / "annotations" / "ap10k-val-split1.json"),
            "images": str(out / "data")}


def train_args(data, out, epochs, *extra):
    return ["train.py", "--train-ann", data["train"], "--val-ann", data["val"],
            "--images", data["images"], "--output-dir", str(out), "--small", "--random-init",
            "--input-size", "64", "--epochs", str(epochs), "--batch-size", "8", "--workers", "0",
            "--lr", "2e-3", "--warmup-iters", "5", "--eval-interval", "100",
            "--eval-batch-size", "16", *extra]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = run(train_args(data, out, 3))
    return out, proc


def test_train_then_evaluate(trained, data, tmp_path):
    out, proc = trained
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert log[-1]["loss"] < log[0]["loss"], log            # the loss falls
    for term in ("pred", "pixel", "semantic"):              # every term of Eq. 10 is logged
        assert all(np.isfinite(r[term]) for r in log)
    assert log[0]["semantic"] > 0 and log[0]["pixel"] > 0
    assert "val_AP" in log[-1] and (out / "best.pt").exists() and (out / "last.pt").exists()
    args = json.load(open(out / "args.json"))
    assert args["git_commit"] and args["args"]["epochs"] == 3

    ckpt = load_checkpoint(str(out / "last.pt"))
    assert ckpt["epoch"] == 2 and len(ckpt["keypoint_names"]) == 17
    proc = run(["evaluate.py", str(out / "last.pt"), "--workers", "0",
                "--output-dir", str(tmp_path), "--vis", "2"])
    assert "AP50" in proc.stdout and "Per species" in proc.stdout
    metrics = json.load(open(tmp_path / "metrics.json"))
    assert 0.0 <= metrics["AP"] <= 1.0
    # evaluate.py reproduces the AP train.py logged for the same weights and data
    assert metrics["AP"] == pytest.approx(log[-1]["val_AP"], abs=1e-9)
    results = json.load(open(tmp_path / "results.json"))
    assert len(results) == len(KeypointDataset(data["val"], data["images"], train=False))
    vis = sorted(os.listdir(tmp_path / "vis"))
    assert sum(f.endswith("_overlay.png") for f in vis) == 2
    assert sum(f.endswith("_scoremaps.png") for f in vis) == 2      # paper Fig. 3
    assert sum(f.endswith("_similarity.png") for f in vis) == 2     # paper Fig. 2


def test_ground_truth_gives_ap_one(data):
    """Ground-truth keypoints written as results go through the COCO path: AP 1.0."""
    ds = KeypointDataset(data["val"], data["images"], train=False)
    results = []
    for ann_id in ds.coco.getAnnIds():
        ann = ds.coco.anns[ann_id]
        if ann["num_keypoints"] == 0 or ann.get("iscrowd", 0):
            continue
        kp = np.asarray(ann["keypoints"], np.float32).reshape(-1, 3)
        kp[:, 2] = 1.0
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "keypoints": kp.reshape(-1).tolist(), "score": 1.0})
    stats, per_category = coco_keypoint_eval(ds.coco, results, ds.sigmas)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
    # and a real error is punished: move every keypoint by 10 px
    moved = [dict(r, keypoints=(np.asarray(r["keypoints"]) + np.tile([10, 10, 0], 17)).tolist())
             for r in results]
    assert coco_keypoint_eval(ds.coco, moved, ds.sigmas)[0]["AP"] < 0.9


def test_resume_is_identical(data, tmp_path):
    """2 epochs straight == 1 epoch, then --resume for the 2nd: bit-identical weights."""
    run(train_args(data, tmp_path / "straight", 2))
    run(train_args(data, tmp_path / "split", 1))
    run(train_args(data, tmp_path / "split", 2, "--resume", str(tmp_path / "split" / "last.pt")))
    a = load_checkpoint(str(tmp_path / "straight" / "last.pt"))
    b = load_checkpoint(str(tmp_path / "split" / "last.pt"))
    assert a["epoch"] == b["epoch"] == 1
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()


def test_kill_while_writing_checkpoint_keeps_previous(tmp_path):
    """A process killed in the middle of save_checkpoint leaves the old file intact."""
    path = tmp_path / "last.pt"
    sys.path.insert(0, ROOT)
    from train import save_checkpoint
    save_checkpoint({"epoch": 0, "w": torch.ones(10)}, str(path))
    script = textwrap.dedent(f"""
        import os, sys, time, torch
        sys.path.insert(0, {ROOT!r})
        import train
        def slow_fsync(fd):             # a disk that stalls after part of the file is written
            print("writing", flush=True)
            time.sleep(60)
        os.fsync = slow_fsync
        train.save_checkpoint({{"epoch": 1, "w": torch.zeros(10_000_000)}}, {str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=ENV)
    assert proc.stdout.readline().strip() == "writing"
    assert any(f.startswith("last.pt.tmp") for f in os.listdir(tmp_path))  # mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 0 and torch.equal(ckpt["w"], torch.ones(10))


def test_torchrun_two_processes_match_single(trained, data, tmp_path):
    """torchrun --nproc_per_node=2 trains and evaluates (gloo on CPU); its evaluation of a
    checkpoint equals the single-process one: no instance lost or counted twice."""
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                "--master_port", "29517"]
    proc = subprocess.run(torchrun + train_args(data, out, 1, "--few-shot", "3"), cwd=ROOT,
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "last.pt").exists() and "val_AP" in open(out / "log.jsonl").read()
    few_shot_ids = json.load(open(out / "few_shot_image_ids.json"))  # Table 2's draw, saved
    train_ids = {a["image_id"] for a in json.load(open(data["train"]))["annotations"]}
    assert set(few_shot_ids) <= train_ids and 3 <= len(few_shot_ids) <= 6 * 3

    ckpt = str(trained[0] / "last.pt")
    single = run(["evaluate.py", ckpt, "--workers", "0", "--output-dir", str(tmp_path / "s")])
    proc = subprocess.run(torchrun + ["evaluate.py", ckpt, "--workers", "0",
                                      "--output-dir", str(tmp_path / "d")],
                          cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s = json.load(open(tmp_path / "s" / "metrics.json"))
    d = json.load(open(tmp_path / "d" / "metrics.json"))
    assert d["world_size"] == 2
    assert d["AP"] == s["AP"] and d["AR"] == s["AR"]
    rs = json.load(open(tmp_path / "s" / "results.json"))
    rd = json.load(open(tmp_path / "d" / "results.json"))
    assert [r["ann_id"] for r in rd] == [r["ann_id"] for r in rs]
    assert len({r["ann_id"] for r in rd}) == len(rd)


def test_clear_errors(trained, data, tmp_path):
    out = trained[0]
    # missing weights file
    base = ["train.py", "--train-ann", data["train"], "--val-ann", data["val"],
            "--images", data["images"], "--output-dir", str(tmp_path / "x")]
    proc = run(base + ["--clip-weights", str(tmp_path / "RN50.pt")], check=False)
    assert proc.returncode != 0 and "RN50.pt" in proc.stderr and "Traceback" not in proc.stderr
    # pre-trained weights required unless --random-init says otherwise
    proc = run(base, check=False)
    assert proc.returncode != 0 and "--clip-weights" in proc.stderr
    assert "Traceback" not in proc.stderr
    # a checkpoint that is not one
    bogus = tmp_path / "bogus.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, bogus)
    proc = run(["evaluate.py", str(bogus)], check=False)
    assert proc.returncode != 0 and "bogus.pt" in proc.stderr and "not a PromptPose" in proc.stderr
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(out / "last.pt", "rb").read()[:5000])
    proc = run(["evaluate.py", str(truncated)], check=False)
    assert proc.returncode != 0 and "truncated.pt" in proc.stderr
    assert "Traceback" not in proc.stderr
    # keypoints that do not match the checkpoint
    ann = json.load(open(data["val"]))
    for cat in ann["categories"]:
        cat["keypoints"] = cat["keypoints"][:16]
        cat["skeleton"] = [s for s in cat["skeleton"] if max(s) <= 16]
    for a in ann["annotations"]:
        a["keypoints"] = a["keypoints"][:48]
        a["num_keypoints"] = sum(v > 0 for v in a["keypoints"][2::3])
    other = tmp_path / "sixteen.json"
    json.dump(ann, open(other, "w"))
    proc = run(["evaluate.py", str(out / "last.pt"), "--ann", str(other),
                "--images", data["images"]], check=False)
    assert proc.returncode != 0 and "sixteen.json" in proc.stderr and "17" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_own_photos(trained, data, tmp_path):
    """--images without --ann: pose for a user's photos, whole image or given boxes."""
    ckpt = str(trained[0] / "last.pt")
    photos = sorted(os.listdir(data["images"]))[:2]
    files = [os.path.join(data["images"], f) for f in photos]
    run(["evaluate.py", ckpt, "--images", *files, "--workers", "0",
         "--output-dir", str(tmp_path / "whole")])
    out = json.load(open(tmp_path / "whole" / "photo_results.json"))
    assert len(out) == 2 and all(len(o["keypoints"]) == 17 for o in out)
    h, w = __import__("cv2").imread(files[0]).shape[:2]
    assert out[0]["bbox"] == [0.0, 0.0, w, h]
    assert len(os.listdir(tmp_path / "whole" / "vis")) == 2
    boxes = tmp_path / "boxes.json"
    json.dump([{"file_name": photos[0], "bbox": [10, 20, 100, 80], "score": 0.5},
               {"file_name": photos[0], "bbox": [50, 50, 60, 60]}], open(boxes, "w"))
    run(["evaluate.py", ckpt, "--images", data["images"], "--boxes", str(boxes),
         "--workers", "0", "--output-dir", str(tmp_path / "boxes")])
    out = json.load(open(tmp_path / "boxes" / "photo_results.json"))
    first = [o for o in out if os.path.basename(o["file_name"]) == photos[0]]
    assert [o["bbox"] for o in first] == [[10, 20, 100, 80], [50, 50, 60, 60]]
    for o in first:  # predictions stay inside (or near) their box: the crop was that box
        x, y, bw, bh = o["bbox"]
        kp = np.asarray(o["keypoints"])
        assert (kp[:, 0] > x - 0.2 * bw).all() and (kp[:, 0] < x + 1.2 * bw).all()
    bad = tmp_path / "bad_boxes.json"
    bad.write_text('[{"file_name": "a.jpg"}]')
    proc = run(["evaluate.py", ckpt, "--images", files[0], "--boxes", str(bad)], check=False)
    assert proc.returncode != 0 and "bad_boxes.json" in proc.stderr


def test_output_dir_is_never_overwritten(trained, data):
    out = trained[0]
    before = open(out / "last.pt", "rb").read()
    proc = run(train_args(data, out, 1), check=False)
    assert proc.returncode != 0 and "--resume" in proc.stderr
    assert open(out / "last.pt", "rb").read() == before


def test_init_from_remaps_keypoints_by_name(trained, capsys):
    """COCO -> AP-10K style transfer: same-name keypoint rows are copied, others keep init."""
    from model import build_model
    from train import init_from
    ckpt = load_checkpoint(str(trained[0] / "last.pt"))
    names = list(ckpt["keypoint_names"])
    other = ["nose", "tail_tip"] + [n for n in names if n != "nose"][:15]  # 16 shared, reordered
    torch.manual_seed(0)
    model = build_model(ckpt["model_config"], other)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    loaded, remapped, skipped = init_from(model, str(trained[0] / "last.pt"))
    sd, src = model.state_dict(), ckpt["model"]
    assert not skipped and "keypoint_head.final_layer.weight" in remapped
    assert "pixel_head.deconv_layers.0.weight" in remapped
    for name in ("keypoint_head.final_layer.weight", "keypoint_head.final_layer.bias"):
        for j, n in enumerate(other):
            expected = src[name][names.index(n)] if n in names else init[name][j]
            assert torch.equal(sd[name][j], expected), (name, n)
    # the fused head's input: backbone channels copied as they are, score-map channels by name
    name, K = "keypoint_head.deconv_layers.0.weight", 17
    C = sd[name].shape[0] - K
    assert torch.equal(sd[name][:C], src[name][:C])
    assert torch.equal(sd[name][C + 0], src[name][C + names.index("nose")])
    assert torch.equal(sd[name][C + 1], init[name][C + 1])  # tail_tip: nothing to copy
    assert torch.equal(sd["prompt_learner.ctx"], src["prompt_learner.ctx"])  # shared context
    assert "16 of 17 shared by name" in capsys.readouterr().out
