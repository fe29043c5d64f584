"""End-to-end tests of train.py and evaluate.py as a user runs them, and of the run directory.

Everything runs on a tiny synthetic AP-10K (generated here) with the small architecture from
random initialisation, so a run takes seconds on a CPU."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from checkpoint import load_checkpoint, save_checkpoint
from synthetic import generate

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def run(args, cwd=ROOT, check=True, env=ENV, timeout=600):
    args = [os.path.join(ROOT, a) if a in ("train.py", "evaluate.py") else a for a in args]
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def one_line_error(proc, *needles):
    """A failed run that says why in one line `error: ...` naming each needle, no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


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


def metrics_of(eval_dir):
    return json.load(open(os.path.join(eval_dir, "metrics.json")))


# ----------------------------------------------------------------------------- the pipeline
def test_train_then_evaluate(trained, tmp_path):
    out, proc = trained
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert log[-1]["loss"] < log[0]["loss"], log            # the loss falls
    for term in ("pred", "pixel", "semantic"):              # every term of Eq. 10 is logged
        assert all(np.isfinite(r[term]) for r in log)
    assert log[0]["semantic"] > 0 and log[0]["pixel"] > 0
    assert "val_AP" in log[-1] and "val_PCK" in log[-1] and "val_RMSE_px" in log[-1]
    for name in ("last.pt", "best.pt", "final.pt", "curves.png", "args.json"):
        assert (out / name).exists(), name
    args = json.load(open(out / "args.json"))
    assert re.fullmatch(r"[0-9a-f]{40}", args["git_commit"]), args["git_commit"]
    assert args["args"]["epochs"] == 3
    assert "Traceback" not in proc.stderr and "\r" not in proc.stdout + proc.stderr  # no bars
    assert "final.pt is the last epoch" in proc.stdout

    last, final, best = (load_checkpoint(str(out / n)) for n in ("last.pt", "final.pt", "best.pt"))
    assert last["kind"] == "full" and final["kind"] == best["kind"] == "model-only"
    assert "optimizer" not in final and "optimizer" in last
    assert last["epoch"] == final["epoch"] == 2 and len(last["keypoint_names"]) == 17
    assert last["prompt_texts"][4] == "tail root"            # AP-10K's root_of_tail
    for name, tensor in last["model"].items():
        assert torch.equal(tensor, final["model"][name]), name
    # evaluate.py on the shareable final.pt reproduces the val AP train.py logged
    proc = run(["evaluate.py", str(out / "final.pt"), "--workers", "0",
                "--output-dir", str(tmp_path / "eval"), "--vis", "2"])
    assert "AP50" in proc.stdout and "PCK" in proc.stdout
    metrics = metrics_of(tmp_path / "eval")
    assert metrics["AP"] == pytest.approx(log[-1]["val_AP"], abs=1e-12)


def test_sigmas_travel_with_the_run_and_evaluation_works_anywhere(data, tmp_path):
    """--sigmas are stored in the checkpoint: evaluate.py CKPT, run from another directory,
    gives exactly the logged val AP; its own --sigmas changes the AP."""
    sigmas = ",".join(["1.0"] * 17)
    out = tmp_path / "run"
    run(train_args(data, out, 1, "--sigmas", sigmas))
    logged = json.loads(open(out / "log.jsonl").read().splitlines()[-1])["val_AP"]
    assert load_checkpoint(str(out / "last.pt"))["sigmas"] == [1.0] * 17
    assert logged > 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run(["evaluate.py", str(out / "last.pt"), "--workers", "0", "--output-dir", "e"],
        cwd=str(elsewhere))
    assert metrics_of(elsewhere / "e")["AP"] == pytest.approx(logged, abs=1e-12)
    run(["evaluate.py", str(out / "last.pt"), "--workers", "0", "--output-dir",
         str(tmp_path / "narrow"), "--sigmas", ",".join(["0.01"] * 17)])
    assert metrics_of(tmp_path / "narrow")["AP"] < logged


def test_non_square_input_trains_and_evaluates(data, tmp_path):
    """--input-size HxW: 96x64 crops, 24x16 heatmaps, train -> evaluate."""
    out = tmp_path / "rect"
    args = train_args(data, out, 1)
    args[args.index("--input-size") + 1] = "96x64"
    run(args)
    ckpt = load_checkpoint(str(out / "last.pt"))
    assert ckpt["model_config"]["image_size"] == [96, 64]
    assert ckpt["model_config"]["heatmap_size"] == [24, 16]
    run(["evaluate.py", str(out / "last.pt"), "--workers", "0", "--output-dir",
         str(tmp_path / "e")])
    assert 0.0 <= metrics_of(tmp_path / "e")["AP"] <= 1.0


# ----------------------------------------------------------------------------- resume
def test_resume_from_the_checkpoint_alone_is_identical(data, tmp_path):
    """2 epochs straight == 1 epoch, then `--resume RUN/last.pt` alone (every flag from the
    checkpoint, a changed --epochs applied): bit-identical weights and optimiser state."""
    run(train_args(data, tmp_path / "straight", 2))
    run(train_args(data, tmp_path / "split", 1))
    run(["train.py", "--resume", str(tmp_path / "split" / "last.pt"), "--epochs", "2"],
        cwd=str(tmp_path))
    a = load_checkpoint(str(tmp_path / "straight" / "last.pt"))
    b = load_checkpoint(str(tmp_path / "split" / "last.pt"))
    assert a["epoch"] == b["epoch"] == 1 and b["args"]["epochs"] == 2
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for key in sa:
        for field, value in sa[key].items():
            assert torch.equal(value, sb[key][field]), (key, field)
    assert a["scheduler"] == b["scheduler"]
    assert json.load(open(tmp_path / "split" / "args.json"))["args"]["epochs"] == 2


def test_resume_refuses_changed_flags_and_other_directories(trained, data, tmp_path):
    out = trained[0]
    before = open(out / "last.pt", "rb").read()
    last = str(out / "last.pt")
    proc = run(["train.py", "--resume", last, "--lr", "1e-2", "--batch-size", "4"], check=False)
    one_line_error(proc, "--lr", "--batch-size")
    proc = run(["train.py", "--resume", last, "--output-dir", str(tmp_path / "B")], check=False)
    one_line_error(proc, "--output-dir")
    assert not (tmp_path / "B").exists()
    best = str(out / "best.pt")
    one_line_error(run(["train.py", "--resume", best], check=False), "model-only")
    assert open(out / "last.pt", "rb").read() == before


def test_resume_auto(data, tmp_path):
    """--resume auto starts fresh in an empty directory and continues an existing run."""
    out = tmp_path / "auto"
    run(train_args(data, out, 1, "--resume", "auto"))
    assert load_checkpoint(str(out / "last.pt"))["epoch"] == 0
    proc = run(train_args(data, out, 2, "--resume", "auto"))
    assert "continuing" in proc.stdout
    assert [json.loads(x)["epoch"] for x in open(out / "log.jsonl")] == [0, 1]


def test_a_run_stopped_between_its_files_repeats_the_epoch(data, tmp_path):
    """last.pt is written after best.pt, final.pt and the log line: a run stopped before it
    resumes at that epoch again, its log records of that epoch dropped (none twice); a run whose
    last.pt was removed is refused by --resume auto, never deleted; the log's lr is the lr each
    epoch trained at; a run resumes without the --init-from file it started from."""
    run(train_args(data, tmp_path / "init", 1))
    out, first = tmp_path / "run", tmp_path / "epoch0.pt"
    args = ("--lr-steps", "1", "--warmup-iters", "0", "--init-from", str(tmp_path / "init" / "final.pt"))
    run(train_args(data, out, 1, *args))
    shutil.copy(out / "last.pt", first)
    shutil.move(str(tmp_path / "init"), str(tmp_path / "moved"))  # the run needs it no more
    run(train_args(data, out, 2, *args, "--resume", "auto"))
    shutil.copy(first, out / "last.pt")                  # stopped before epoch 1's last.pt
    proc = run(train_args(data, out, 2, *args, "--resume", "auto"))
    assert "dropped the records of epoch(s) >= 1" in proc.stdout
    log = [json.loads(x) for x in open(out / "log.jsonl")]
    assert [r["epoch"] for r in log] == [0, 1]
    assert [r["lr"] for r in log] == pytest.approx([2e-3, 2e-4])  # x0.1 from epoch 1 on
    os.remove(out / "last.pt")                           # a finished run without its last.pt
    proc = run(train_args(data, out, 3, *args, "--resume", "auto"), check=False)
    one_line_error(proc, "without its last.pt", "--init-from")
    assert (out / "final.pt").exists() and (out / "best.pt").exists()


def test_a_frozen_image_encoder_trains_and_logs_the_schedule_lr(data, tmp_path):
    """--backbone-lr-mult 0 (SimpleBaseline: the first optimiser group is the image encoder)."""
    out = tmp_path / "frozen"
    run(train_args(data, out, 1, "--method", "baseline", "--backbone-lr-mult", "0",
                   "--warmup-iters", "0"))
    assert json.loads(open(out / "log.jsonl").readline())["lr"] == pytest.approx(2e-3)


def test_resume_on_another_number_of_processes_keeps_the_schedule_in_epochs():
    from recipe import lr_factor
    from recipe import align_schedule
    def schedule(iters_per_epoch):  # lr steps x0.1 at epoch 2
        weight = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.AdamW([{"params": [weight], "lr": 1e-3}], lr=1e-3)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(iters_per_epoch, 0, 0.001,
                                                                      [2]))
    one = schedule(10)                                   # 1 process: 10 iterations an epoch
    for _ in range(10):                                  # epoch 0
        one.optimizer.step(), one.step()
    two = schedule(5)                                    # resumed on 2 processes: 5 an epoch
    two.load_state_dict(one.state_dict())
    align_schedule(two, 1 * 5, world=2)                  # next epoch 1
    lrs = []
    for _ in range(10):                                  # epochs 1 and 2
        lrs.append(two.optimizer.param_groups[0]["lr"])
        two.optimizer.step(), two.step()
    assert lrs == pytest.approx([1e-3] * 5 + [1e-4] * 5)  # the step at epoch 2, not epoch 4


# ----------------------------------------------------------------------------- run directory
def test_a_run_directory_belongs_to_one_run(trained, data, tmp_path):
    out = trained[0]
    before = open(out / "last.pt", "rb").read()
    one_line_error(run(train_args(data, out, 1), check=False), "--resume")
    assert open(out / "last.pt", "rb").read() == before
    # any run file means a run lives there, even without last.pt
    best_only = tmp_path / "best_only"
    best_only.mkdir()
    (best_only / "best.pt").write_bytes(open(out / "best.pt", "rb").read())
    one_line_error(run(train_args(data, best_only, 1), check=False), "best.pt")


def test_resume_auto_restarts_a_run_killed_before_its_first_checkpoint(trained, data, tmp_path):
    """A preemptible job restarts itself: args.json without last.pt starts afresh; --epochs
    below what a run has done is refused; a finished run started again trains nothing and
    its final.pt stays; a planted .lock / few_shot_image_ids.json link is replaced, never
    written through; a torn last log line is dropped with a warning."""
    out = tmp_path / "early"
    out.mkdir()
    (out / "args.json").write_text("{}")                 # killed before the first last.pt
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    os.symlink(target, out / ".lock")
    os.symlink(target, out / "few_shot_image_ids.json")
    proc = run(train_args(data, out, 1, "--resume", "auto", "--few-shot", "3"))
    assert "starting it afresh" in proc.stdout and (out / "final.pt").exists()
    assert target.read_text() == "keep me" and not os.path.islink(out / ".lock")
    assert json.load(open(out / "few_shot_image_ids.json"))
    with open(out / "log.jsonl", "a") as f:
        f.write('{"epoch": 1, "lo')                          # a write cut short by a kill
    proc = run(train_args(data, out, 2, "--resume", "auto", "--few-shot", "3", "--eval-interval", "1"))
    assert "torn last line" in proc.stderr and (out / "curves.png").exists()
    one_line_error(run(["train.py", "--resume", str(out / "last.pt"), "--epochs", "1"],
                       check=False), "--epochs 1", "trained 2 epochs")
    final = open(out / "final.pt", "rb").read()
    proc = run(["train.py", "--resume", str(out / "last.pt"), "--epochs", "2"])
    assert "nothing to do" in proc.stdout and open(out / "final.pt", "rb").read() == final


def test_checkpoint_with_nan_weights_is_refused(trained, tmp_path):
    ckpt = torch.load(trained[0] / "final.pt", weights_only=True)
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name] = ckpt["model"][name] * float("nan")
    torch.save(ckpt, tmp_path / "nan.pt")
    one_line_error(run(["evaluate.py", str(tmp_path / "nan.pt")], check=False), "nan.pt",
                   "NaN / inf", name)


def test_second_writer_is_refused_while_the_first_runs(data, tmp_path):
    out = tmp_path / "busy"
    first = subprocess.Popen([sys.executable, *train_args(data, out, 50)], cwd=ROOT, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / ".lock").exists() or not open(out / ".lock").read():
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.2)
        proc = run(train_args(data, out, 1, "--resume", "auto"), check=False)
        one_line_error(proc, "in use", f"pid {first.pid}")
    finally:
        first.send_signal(signal.SIGINT)                     # Ctrl-C: one line, exit 130
        _, err = first.communicate(timeout=120)
    assert first.returncode == 130 and "Traceback" not in err and "interrupted" in err + _, err


def test_failed_checkpoint_write_leaves_no_litter(data, tmp_path):
    """A file-size limit (disk full) makes the write fail: one line naming the path, no
    temporary file left, the earlier run files intact."""
    out = tmp_path / "full"
    run(train_args(data, out, 1))
    before = open(out / "last.pt", "rb").read()
    limit = textwrap.dedent(f"""
        import resource, runpy, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        sys.argv = {["train.py", "--resume", str(out / "last.pt"), "--epochs", "2"]!r}
        runpy.run_path({os.path.join(ROOT, "train.py")!r}, run_name="__main__")
    """)
    proc = run(["-c", limit], check=False)
    one_line_error(proc, "could not write checkpoint", "intact")
    assert sorted(os.listdir(out)) == sorted(
        [".lock", "args.json", "best.pt", "curves.png", "final.pt", "last.pt", "log.jsonl"])
    assert open(out / "last.pt", "rb").read() == before


def test_stale_temporary_files_are_cleaned(data, tmp_path):
    out = tmp_path / "stale"
    run(train_args(data, out, 1))
    (out / "last.pt.tmp.12345").write_bytes(b"half a checkpoint")
    proc = run(["train.py", "--resume", str(out / "last.pt"), "--epochs", "2"])
    assert not (out / "last.pt.tmp.12345").exists() and "last.pt.tmp.12345" in proc.stdout


def test_kill_while_writing_checkpoint_keeps_previous(tmp_path):
    """A process killed in the middle of save_checkpoint leaves the old file intact."""
    path = tmp_path / "last.pt"
    save_checkpoint(str(path), {"epoch": 0, "w": torch.ones(10)})
    script = textwrap.dedent(f"""
        import os, sys, time, torch
        sys.path.insert(0, {ROOT!r})
        import checkpoint
        def slow_fsync(fd):             # a disk that stalls after part of the file is written
            print("writing", flush=True)
            time.sleep(60)
        os.fsync = slow_fsync
        checkpoint.save_checkpoint({str(path)!r}, {{"epoch": 1, "w": torch.zeros(10_000_000)}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=ENV)
    assert proc.stdout.readline().strip() == "writing"
    assert any(f.startswith("last.pt.tmp") for f in os.listdir(tmp_path))  # mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 0 and torch.equal(ckpt["w"], torch.ones(10))


# ----------------------------------------------------------------------------- torchrun
def test_torchrun_two_processes_match_single(trained, data, tmp_path):
    """torchrun --nproc_per_node=2 trains and evaluates (gloo on CPU); its evaluation of a
    checkpoint equals the single-process one: no instance lost or counted twice."""
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                "--master_port", "29517"]
    # --alpha2 0: L_pixel off leaves the pixel head without gradients, which DDP must be told
    proc = subprocess.run(torchrun + train_args(data, out, 1, "--few-shot", "3", "--alpha2", "0"),
                          cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "last.pt").exists() and "val_AP" in open(out / "log.jsonl").read()
    # the same world of two ranks as two nodes of one process each (c10d rendezvous on this host)
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                               "--nproc_per_node", "1", "--node-rank", str(r), "--rdzv-backend",
                               "c10d", "--rdzv-endpoint", "127.0.0.1:29527", "--rdzv-id", "two"]
                              + train_args(data, tmp_path / "nodes", 1, "--few-shot", "3",
                                           "--alpha2", "0"),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=ENV) for r in (0, 1)]
    for node in nodes:
        assert node.wait(timeout=300) == 0, node.stdout.read()
    one, two = (torch.load(d / "final.pt", weights_only=True) for d in (out, tmp_path / "nodes"))
    assert two["args"]["few_shot"] == 3 and all(torch.allclose(one["model"][k].float(), v.float())
                                                for k, v in two["model"].items())
    logs = [json.loads(open(d / "log.jsonl").readline()) for d in (out, tmp_path / "nodes")]
    assert logs[0]["val_RMSE_px"] == pytest.approx(logs[1]["val_RMSE_px"])
    few_shot_ids = json.load(open(out / "few_shot_image_ids.json"))  # Table 2's draw, saved
    train_ids = {a["image_id"] for a in json.load(open(data["train"]))["annotations"]}
    assert set(few_shot_ids) <= train_ids and 3 <= len(few_shot_ids) <= 6 * 3

    ckpt = str(trained[0] / "last.pt")
    run(["evaluate.py", ckpt, "--workers", "0", "--output-dir", str(tmp_path / "s")])
    proc = subprocess.run(torchrun + ["evaluate.py", ckpt, "--workers", "0",
                                      "--output-dir", str(tmp_path / "d")],
                          cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s, d = metrics_of(tmp_path / "s"), metrics_of(tmp_path / "d")
    assert d["world_size"] == 2
    assert d["AP"] == s["AP"] and d["AR"] == s["AR"]
    rs = json.load(open(tmp_path / "s" / "results.json"))
    rd = json.load(open(tmp_path / "d" / "results.json"))
    assert [r["ann_id"] for r in rd] == [r["ann_id"] for r in rs]
    assert len({r["ann_id"] for r in rd}) == len(rd)


def test_torchrun_failed_start_is_one_line(data, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                "--master_port", "29519"]
    args = train_args(data, tmp_path / "x", 1)
    args.remove("--random-init")
    args.remove("--small")
    proc = subprocess.run(torchrun + args + ["--clip-weights", str(tmp_path / "RN50.pt")],
                          cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "RN50.pt" in errors[0]        # rank 0 says it, once
    assert f'File "{os.path.join(ROOT, "train.py")}"' not in proc.stderr  # no child traceback
    assert "traceback : error: " in proc.stderr and "RN50.pt" in proc.stderr.splitlines()[-2]
    assert '"train_ann"' not in proc.stdout   # the flags are printed once training starts


def test_torchrun_bad_image_in_rank_1_share_is_said_once_by_rank_1(data, tmp_path):
    """Validation crops of instance 1 are rank 1's: its truncated JPEG is reported by rank 1,
    once, in one line, and ends torchrun's failure summary; rank 0, whose peer stopped,
    adds no traceback."""
    images = tmp_path / "images"
    shutil.copytree(data["images"], images)
    val = json.load(open(data["val"]))
    first_two = sorted(val["annotations"], key=lambda a: a["id"])[:2]
    names = {im["id"]: im["file_name"] for im in val["images"]}
    bad = images / names[first_two[1]["image_id"]]
    assert first_two[0]["image_id"] != first_two[1]["image_id"]
    bad.write_bytes(bad.read_bytes()[:600])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                "--master_port", "29523"]
    args = train_args(data, tmp_path / "run", 1, "--few-shot", "3")
    args[args.index("--images") + 1] = str(images)
    proc = subprocess.run(torchrun + args, cwd=ROOT, capture_output=True, text=True, env=ENV,
                          timeout=600)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and bad.name in errors[0] and "truncated" in errors[0], proc.stderr
    assert f'File "{os.path.join(ROOT, "train.py")}"' not in proc.stderr, proc.stderr
    assert "traceback : error: " in proc.stderr   # the last line of torchrun's summary
    # rank 0, whose peer stopped, says so in one `stopped:` line and prints no gloo traceback
    assert all(line.startswith("stopped: ") for line in proc.stderr.splitlines()
               if "Connection closed" in line), proc.stderr


def children(pid):
    """Process ids whose parent is pid (Linux /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    return kids


@pytest.fixture
def reaped():
    """Popen objects appended here are killed when the test ends, passed or failed."""
    procs = []
    yield procs
    for proc in procs:
        for pid in children(proc.pid) + [proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def test_each_launch_of_the_workers_agrees_on_its_own_store_namespace():
    """torchrun's agent keeps one store across restarts: the workers of a new launch must agree
    on a namespace of their own even when ranks 1 and 2 come first and the store still holds an
    earlier launch's keys, including those of a worker killed half-way (token, no answer)."""
    import threading
    from distributed import launch_namespace
    server = torch.distributed.TCPStore("127.0.0.1", 0, 1, is_master=True)

    def launch(ranks_first, world=3):
        names, threads = {}, []
        for rank in ranks_first + [r for r in range(world) if r not in ranks_first]:
            client = torch.distributed.TCPStore("127.0.0.1", server.port, world, is_master=False)
            threads.append(threading.Thread(target=lambda r=rank, c=client: names.__setitem__(
                r, launch_namespace(c, r, world))))
            threads[-1].start()
            time.sleep(0.2)  # the later ranks find the earlier ones' keys already set
        for t in threads:
            t.join(timeout=30)
        assert len(names) == world and len(set(names.values())) == 1, names
        return names[0]

    first = launch([0])
    server.set("launch/token/2", "a-worker-killed-before-its-answer")
    second = launch([1, 2])
    third = launch([2, 1])
    assert len({first, second, third}) == 3


def test_elastic_restart_resumes_and_a_dead_node_stops_the_other(data, tmp_path, reaped):
    """torchrun --max-restarts 1 with --resume auto: a worker killed (SIGKILL) mid-run comes back
    and the run continues from its last checkpoint by itself, to the same epoch count and a
    loadable final.pt. A node whose agent and worker die for good stops the other node within a
    bounded time, which says so in one line and hangs nowhere."""
    out = tmp_path / "elastic"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--max-restarts",
           "1", "--master_port", "29531"] + train_args(data, out, 4, "--resume", "auto",
                                                        "--batch-size", "4")
    log = tmp_path / "agent.txt"   # a file, not a pipe: nobody reads a pipe while we wait
    agent = subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                             env=ENV)
    reaped.append(agent)
    deadline = time.time() + 120
    while not (out / "last.pt").exists():              # the first resume point
        assert time.time() < deadline and agent.poll() is None
        time.sleep(0.05)
    workers = children(agent.pid)
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    agent.wait(timeout=300)
    output = log.read_text()
    assert agent.returncode == 0, output
    assert "--resume auto: continuing" in output and "resumed" in output
    epochs = [json.loads(line)["epoch"] for line in open(out / "log.jsonl")]
    assert epochs[-1] == 3 and sorted(set(epochs)) == epochs
    assert torch.load(out / "final.pt", weights_only=True)["epoch"] == 3

    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                               "--nproc_per_node", "1", "--node-rank", str(r), "--rdzv-backend",
                               "c10d", "--rdzv-endpoint", "127.0.0.1:29533", "--rdzv-id", "dead"]
                              + train_args(data, tmp_path / "dead", 50, "--batch-size", "4"),
                              cwd=ROOT, stdout=open(tmp_path / f"node{r}.txt", "w"),
                              stderr=subprocess.STDOUT, env=ENV) for r in (0, 1)]
    reaped.extend(nodes)
    while not (tmp_path / "dead" / "log.jsonl").exists():
        assert time.time() < deadline + 120 and nodes[0].poll() is None
        time.sleep(0.05)
    dead = [n for n in nodes if len(children(n.pid)) == 1][-1]
    for pid in children(dead.pid) + [dead.pid]:
        os.kill(pid, signal.SIGKILL)
    survivor = 1 if dead is nodes[0] else 0
    start = time.time()
    nodes[survivor].wait(timeout=120)
    output = (tmp_path / f"node{survivor}.txt").read_text()
    assert nodes[survivor].returncode != 0 and time.time() - start < 120
    assert sum(line.startswith("stopped: another process of this run ended")
               for line in output.splitlines()) == 1, output
    assert 'File "' + os.path.join(ROOT, "train.py") not in output


# ----------------------------------------------------------------------------- bad input
def test_weights_are_checked_before_the_annotations(tmp_path):
    proc = run(["train.py", "--train-ann", str(tmp_path / "nope.json"), "--val-ann",
                str(tmp_path / "nope.json"), "--images", str(tmp_path), "--output-dir",
                str(tmp_path / "x"), "--clip-weights", str(tmp_path / "RN50.pt")], check=False)
    one_line_error(proc, "RN50.pt")
    proc = run(["train.py", "--train-ann", str(tmp_path / "nope.json"), "--val-ann",
                str(tmp_path / "nope.json"), "--images", str(tmp_path), "--output-dir",
                str(tmp_path / "y")], check=False)
    one_line_error(proc, "--clip-weights")


@pytest.mark.parametrize("flag,value", [
    ("--few-shot", "0"), ("--few-shot", "-3"), ("--epochs", "0"), ("--eval-interval", "0"),
    ("--input-size", "100"), ("--input-size", "0"), ("--input-size", "256x"),
    ("--n-ctx", "80"), ("--sigmas", "0.1,abc"), ("--sigmas", "nan"), ("--lr-steps", "1.5,2"),
    ("--batch-size", "0")])
def test_meaningless_flags_are_refused_at_parse_time(flag, value, capsys):
    from train import get_args_parser
    with pytest.raises(SystemExit) as exit_info:
        get_args_parser().parse_args([flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err


def test_flags_refused_after_parsing(data, tmp_path):
    if not torch.cuda.is_available():
        proc = run(train_args(data, tmp_path / "c", 1, "--device", "cuda"), check=False)
        one_line_error(proc, "--device", "GPU")
    proc = run(train_args(data, tmp_path / "s", 1, "--sigmas", "0.1,0.2"), check=False)
    one_line_error(proc, "sigmas", "17")
    proc = run(train_args(data, tmp_path / "f", 1, "--flip-pairs", "left_eye,tail"),
               check=False)
    one_line_error(proc, "tail")


def test_bad_image_inside_a_worker_is_one_line(data, tmp_path):
    """A 0-byte image read by a data-loader worker ends in one line, not the worker's trace."""
    images = tmp_path / "images"
    images.mkdir()
    for f in os.listdir(data["images"]):
        os.symlink(os.path.join(data["images"], f), images / f)
    victim = sorted(os.listdir(images))[0]
    os.remove(images / victim)
    (images / victim).write_bytes(b"")
    args = train_args({**data, "images": str(images)}, tmp_path / "run", 1)
    args[args.index("--workers") + 1] = "2"
    one_line_error(run(args, check=False), victim)


def test_nan_loss_names_the_likely_cause(data, tmp_path):
    proc = run(train_args(data, tmp_path / "nan", 1, "--lr", "1e30", "--warmup-iters", "0"),
               check=False)
    line = one_line_error(proc, "loss", "image ids", "--lr")
    assert re.search(r"image ids \[\d+", line)


def test_evaluation_errors(trained, data, tmp_path):
    out = trained[0]
    bogus = tmp_path / "bogus.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, bogus)
    one_line_error(run(["evaluate.py", str(bogus)], check=False), "bogus.pt", "not a PromptPose")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(out / "last.pt", "rb").read()[:5000])
    one_line_error(run(["evaluate.py", str(truncated)], check=False), "truncated.pt")


def test_help_shows_defaults():
    proc = run(["train.py", "--help"])
    text = " ".join(proc.stdout.split())
    assert "total epochs (default: 210)" in text and "AdamW learning rate (default: 0.0005)" in text
    assert "(default: None)" not in text  # defaults that depend on the backbone are in words


# ----------------------------------------------------------------------------- init-from
def test_init_from_remaps_keypoints_by_name(trained, capsys):
    """COCO -> AP-10K style transfer: same-name keypoint rows are copied, others keep init."""
    from checkpoint import init_from
    from model import build_model
    ckpt = load_checkpoint(str(trained[0] / "last.pt"))
    names = list(ckpt["keypoint_names"])
    other = ["nose", "tail_tip"] + [n for n in names if n != "nose"][:15]  # 16 shared, reordered
    torch.manual_seed(0)
    model = build_model(ckpt["model_config"], other)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from(model, str(trained[0] / "last.pt"))
    sd, src = model.state_dict(), ckpt["model"]
    assert not report["skipped"] and "keypoint_head.final_layer.weight" in report["remapped"]
    assert "pixel_head.deconv_layers.0.weight" in report["remapped"]
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
    fewer = [n for n in names if n != "nose"][:15]        # another keypoint count: 17 -> 15
    model = build_model(ckpt["model_config"], fewer)
    report, sd = init_from(model, str(trained[0] / "last.pt")), model.state_dict()
    assert name in report["remapped"] and torch.equal(sd[name][:C], src[name][:C])
    assert torch.equal(sd[name][C + 0], src[name][C + names.index(fewer[0])])


def test_init_from_across_grids_and_backbones(data, tmp_path):
    """COCO-style 256x192 pre-training -> 256x256 fine-tuning (here 64x32 -> 64x64): the
    positional table is resized and said so; another backbone is refused unless partial."""
    pre = tmp_path / "pre"
    args = train_args(data, pre, 1)
    args[args.index("--input-size") + 1] = "64x32"
    run(args)
    proc = run(train_args(data, tmp_path / "fine", 1, "--init-from", str(pre / "last.pt")))
    assert "resized visual.attnpool.positional_embedding" in proc.stdout
    ckpt = load_checkpoint(str(pre / "last.pt"))
    table = ckpt["model"]["visual.attnpool.positional_embedding"]
    fine = load_checkpoint(str(tmp_path / "fine" / "last.pt"))
    assert table.shape[0] == 1 + 2 * 1 and fine["model"][
        "visual.attnpool.positional_embedding"].shape[0] == 1 + 2 * 2
    proc = run(train_args(data, tmp_path / "vit", 1, "--backbone", "clip-vitb16",
                          "--init-from", str(pre / "last.pt")), check=False)
    one_line_error(proc, "--init-from-partial")
    proc = run(train_args(data, tmp_path / "vit2", 1, "--backbone", "clip-vitb16",
                          "--init-from", str(pre / "last.pt"), "--init-from-partial"))
    assert "kept initial value: visual." in proc.stdout
