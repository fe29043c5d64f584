"""A run directory and its checkpoints: the one place that writes, reads and checks them.

A run directory (`--output-dir`) belongs to one run. It holds last.pt (full checkpoint after
every epoch: what --resume reads), best.pt (model-only, best val AP so far), final.pt (model-only,
last epoch: what the paper's tables report), args.json (flags, git commit, world size, model
config), log.jsonl (one json line per epoch: loss terms, lr, val metrics), curves.png (loss terms
and val AP over epochs) and .lock (held with flock by the process that trains into it).

A checkpoint is one dict, written atomically (files.atomic_file: a crash or a kill leaves the
old file or the new one, never a torn one). Its fields, written down once here:

    kind             "full" (last.pt: resumable) or "model-only" (best.pt / final.pt: to share)
    model            the model's state dict (loads with strict=True into the rebuilt model)
    model_config     model.cfg: build_model(model_config, keypoint_names, prompt_texts)
                     rebuilds the architecture (the checkpoint is the config)
    keypoint_names   the K keypoint names, in heatmap order
    prompt_texts     the K texts of the language prompts (Eq. 2)
    flip_pairs       [[i, j], ...] left/right pairs (empty: no flip augmentation / flip test)
    skeleton         [[i, j], ...] 0-based limbs, for drawing
    sigmas           the K OKS sigmas the run was evaluated with
    args             the run's flags (dict; data paths absolute)
    epoch            last finished epoch (0-based)
    best_ap          best val value of `selected_by` so far (-1 before the first evaluation)
    selected_by      what best.pt is chosen by: "val_AP", or "val_RMSE_px" (lower is better)
                     for data without OKS sigmas
    git_commit       commit of the code that wrote it
    optimizer, scheduler, scaler    full checkpoints only
"""
import argparse
import fcntl
import glob
import os
import signal
import subprocess

import torch

from backbones import resize_positional_tables
from distributed import is_main, print0
from files import atomic_file, read_lines, torch_load
from model import build_model

MODEL_FIELDS = ("model", "model_config", "keypoint_names", "prompt_texts", "flip_pairs",
                "skeleton", "sigmas", "args", "epoch", "best_ap", "git_commit")
TRAINING_FIELDS = ("optimizer", "scheduler", "scaler")
RUN_FILES = ("last.pt", "best.pt", "final.pt", "args.json", "log.jsonl")


# ----------------------------------------------------------------------------- run directory
def git_commit():
    """The 40-hex commit of this code, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lock_run_dir(run_dir):
    """Create run_dir and lock it -> the open lock file (keep it); a second writer is refused."""
    lock = os.path.join(run_dir, ".lock")
    try:
        os.makedirs(run_dir, exist_ok=True)
        if os.path.islink(lock):  # run files are replaced, never written through a link
            os.remove(lock)
        handle = os.fdopen(os.open(lock, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
                                   0o644), "a+")
    except OSError as e:
        raise ValueError(f"--output-dir {run_dir}: cannot create it ({e.strerror}); choose a "
                         "writable path") from e
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        other = handle.read().strip() or "another process"
        handle.close()
        raise ValueError(f"--output-dir {run_dir} is in use by a running training ({other}); "
                         f"wait for it or choose another --output-dir") from None
    handle.truncate(0)  # the file is opened to append: the line lands at offset 0
    handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    handle.flush()
    return handle


# ----------------------------------------------------------------------------- write / read
def save_checkpoint(path, ckpt):
    """Atomic write of a checkpoint dict (see the module docstring). Ctrl-C waits for the end
    of the write: inside torch.save it would surface as a RuntimeError of the zip writer."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with atomic_file(path) as f:
            torch.save(ckpt, f)
    except (OSError, RuntimeError) as e:  # torch's zip writer raises RuntimeError
        reason = getattr(e, "strerror", None) or "disk full or a file size limit?"
        raise OSError(f"could not write checkpoint {path} ({reason}); the previous one, if any, "
                      f"is intact: free space, then --resume auto") from e
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a Ctrl-C held back lands now


def make_checkpoint(model, data_info, args, epoch, best_ap, commit, optimizer=None,
                    scheduler=None, scaler=None):
    """The checkpoint dict of the module docstring; model-only when no optimizer is given."""
    ckpt = {"kind": "model-only" if optimizer is None else "full", "model": model.state_dict(),
            "model_config": model.cfg, "keypoint_names": list(model.keypoint_names),
            "prompt_texts": list(model.prompt_texts),
            "flip_pairs": [list(map(int, p)) for p in data_info["flip_pairs"]],
            "skeleton": [list(map(int, s)) for s in data_info["skeleton"]],
            "sigmas": [float(s) for s in data_info["sigmas"]],
            "args": dict(args), "epoch": epoch, "best_ap": best_ap, "git_commit": commit,
            "selected_by": data_info.get("selected_by", "val_AP")}
    if optimizer is not None:
        ckpt.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    scaler=scaler.state_dict())
    return ckpt


def model_only(ckpt):
    return {**{k: v for k, v in ckpt.items() if k not in TRAINING_FIELDS}, "kind": "model-only"}


def load_checkpoint(path, need_training_state=False):
    """Read a checkpoint written by train.py (weights_only=True), or say what the file is not."""
    ckpt = torch_load(path, "a PromptPose checkpoint (.pt) written by train.py")
    missing = [k for k in MODEL_FIELDS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path!r} is not a PromptPose checkpoint of this version (missing "
                         f"{missing}); CLIP or ImageNet weights go to train.py --clip-weights / "
                         f"--imagenet-weights instead")
    if need_training_state and ckpt.get("kind") != "full":
        raise ValueError(f"{path!r} is a model-only checkpoint (no optimiser state): resume "
                         f"from the run's last.pt, or start a new run with --init-from {path}")
    bad = next((k for k, v in ckpt["model"].items() if v.is_floating_point()
                and not torch.isfinite(v).all()), None)
    if bad:  # a run that diverged: its predictions would be silently meaningless
        raise ValueError(f"{path!r} holds NaN / inf weights (first in {bad}): the run diverged; "
                         f"use an earlier checkpoint (best.pt) or train again with a lower --lr")
    return ckpt


def model_from_checkpoint(ckpt):
    """Rebuild the exact architecture from the stored config and load the weights strictly."""
    model = build_model(ckpt["model_config"], ckpt["keypoint_names"], ckpt["prompt_texts"])
    model.load_state_dict(ckpt["model"], strict=True)
    return model


# ----------------------------------------------------------------------------- init-from
def keypoint_block(model, name, shape, K):
    """The offset along dim 0 of the K keypoint rows of a tensor of `shape` (a model with K
    keypoints), or None: the heads' last convolutions
    (one output channel per keypoint), the pixel head's first deconvolution (one input channel
    per score map S_n) and, with the pixel branch, the keypoint head's last K input channels
    (F_fuse = F (+) S, Eq. 9). A ViT pixel head whose deconvolutions are K wide is keypoint-indexed
    throughout; those tensors are not remapped (they are skipped when K differs)."""
    if name in ("keypoint_head.final_layer.weight", "keypoint_head.final_layer.bias",
                "pixel_head.final_layer.weight", "pixel_head.final_layer.bias",
                "pixel_head.deconv_layers.0.weight"):
        return 0
    if name == "keypoint_head.deconv_layers.0.weight" and model.pixel_head is not None:
        return shape[0] - K
    return None


def remap_keypoint_rows(target, source, offset, names, source_names):
    """A clone of `target` taking `source`'s rows before `offset` and its keypoint rows by name."""
    new = target.clone()
    new[:offset] = source[:offset]
    for j, n in enumerate(names):
        if n in source_names:
            new[offset + j] = source[offset + source_names.index(n)]
    return new


def init_from(model, path, partial=False):
    """Initialise from another run's checkpoint (COCO human pre-training -> AP-10K, Tables 3-4):
    tensors whose name and shape match are copied, positional tables of another grid resized,
    keypoint-indexed rows matched by keypoint *name* (COCO and AP-10K share eyes, nose, ...).
    Prints and returns {"loaded", "resized", "remapped", "skipped", "untouched"} name lists."""
    ckpt = load_checkpoint(path)
    mine, theirs = model.cfg, ckpt["model_config"]
    if not partial and (mine["backbone"] != theirs["backbone"]
                        or mine["vision"]["type"] != theirs["vision"]["type"]):
        raise ValueError(f"--init-from {path}: trained with --backbone {theirs['backbone']} "
                         f"({theirs['vision']['type']}), this run uses {mine['backbone']} "
                         f"({mine['vision']['type']}); --init-from-partial loads only what matches")
    source, resized = resize_positional_tables(ckpt["model"], model, theirs["vision"].get("grid"))
    source_names, names = list(ckpt["keypoint_names"]), list(model.keypoint_names)
    target = model.state_dict()
    report = {"loaded": [], "resized": resized, "remapped": [], "skipped": [], "untouched": []}
    for name, tensor in source.items():
        if name not in target:
            report["skipped"].append(f"{name}: not in this model")
            continue
        offset = (None if source_names == names else
                  keypoint_block(model, name, target[name].shape, len(names)))
        if offset is not None and (tensor.shape[1:] == target[name].shape[1:] and keypoint_block(
                model, name, tensor.shape, len(source_names)) == offset):
            target[name] = remap_keypoint_rows(target[name], tensor, offset, names, source_names)
            report["remapped"].append(name)
        elif target[name].shape != tensor.shape:
            report["skipped"].append(f"{name}: shape {tuple(tensor.shape)} != "
                                     f"{tuple(target[name].shape)}")
        else:
            target[name] = tensor
            report["loaded"].append(name)
    report["untouched"] = [n for n in target if n not in source]
    report["untouched"] += [s.split(":")[0] for s in report["skipped"]
                            if not s.endswith("not in this model")]
    model.load_state_dict(target, strict=True)
    print_init_report(path, report, names, source_names)
    return report


def print_init_report(path, report, names, source_names):
    shared = [n for n in names if n in source_names]
    print0(f"--init-from {path}: loaded {len(report['loaded'])} tensors, resized "
           f"{len(report['resized'])} positional table(s), remapped {len(report['remapped'])} by "
           f"keypoint name, skipped {len(report['skipped'])}; {len(report['untouched'])} of this "
           f"model's tensors keep their initial value")
    if names != source_names:
        print0(f"  keypoints differ: {len(shared)} of {len(names)} shared by name {shared}; "
               f"the rows of the other {len(names) - len(shared)} keep their initial value")
    for line in ([f"  resized {n} to this model's grid (bilinear)" for n in report["resized"]]
                 + [f"  remapped {n}" for n in report["remapped"]]
                 + [f"  skipped {s}" for s in report["skipped"]]
                 + [f"  kept initial value: {n}" for n in report["untouched"]]):
        print0(line)


# ----------------------------------------------------------------------------- resume
# flags that may differ from the run's own when resuming (applied and recorded in args.json)
RESUME_CHANGEABLE = ("resume", "epochs", "workers", "eval_interval", "eval_batch_size",
                     "device", "compile", "output_dir")
PATH_FLAGS = ("train_ann", "val_ann", "images", "val_images", "clip_weights",
              "imagenet_weights", "init_from", "output_dir")


def resolve_args(parser, argv):
    """Parse argv; with --resume, the run's own flags are the base and the given ones must
    agree with them (or be RESUME_CHANGEABLE). Paths become absolute."""
    args = parser.parse_args(argv)
    actions = (parser._option_string_actions.get(token.split("=")[0]) for token in argv)
    given = {action.dest for action in actions if action is not None}  # flags on the command line
    last = os.path.join(args.output_dir, "last.pt")
    if args.resume == "auto" and os.path.exists(last):
        args.resume = last
        print0(f"--resume auto: continuing {last}")
    if args.resume and args.resume != "auto":  # "auto" with no last.pt: a fresh start
        ckpt = load_checkpoint(args.resume, need_training_state=True)
        run_dir = os.path.dirname(os.path.abspath(args.resume))
        if "output_dir" in given and os.path.abspath(args.output_dir) != run_dir:
            raise ValueError(f"--resume {args.resume} continues the run in {run_dir}; it cannot "
                             f"write into --output-dir {args.output_dir} (drop that flag)")
        stored = ckpt["args"]
        differ = sorted(k for k in given if k not in RESUME_CHANGEABLE
                        and absolute(k, getattr(args, k)) != stored.get(k))
        if differ:
            raise ValueError(f"--resume {args.resume}: " + ", ".join(
                f"--{k.replace('_', '-')} {getattr(args, k)!r} differs from the run's "
                f"{stored.get(k)!r}" for k in differ) + "; drop those flags (only "
                f"{', '.join('--' + k.replace('_', '-') for k in RESUME_CHANGEABLE[1:])} "
                f"may change on resume)")
        keep = {k: getattr(args, k) for k in given if k in RESUME_CHANGEABLE}
        args = argparse.Namespace(**{**vars(parser.parse_args([])), **stored, **keep,
                                     "resume": os.path.abspath(args.resume), "output_dir": run_dir})
        if args.epochs < ckpt["epoch"] + 1:
            done = ckpt["epoch"] + 1
            raise ValueError(f"--epochs {args.epochs}: the run in {run_dir} has trained {done} "
                             f"epochs already; give --epochs {done} or more")
    missing = [f"--{k.replace('_', '-')}" for k in ("train_ann", "val_ann", "images")
               if not getattr(args, k)]
    if missing:
        raise ValueError(f"{' and '.join(missing)} required (or --resume RUN/last.pt)")
    for k in PATH_FLAGS:
        setattr(args, k, absolute(k, getattr(args, k)))
    return args


def absolute(dest, value):
    return os.path.abspath(value) if dest in PATH_FLAGS and value else value


def open_run(args):
    """Rank 0: lock the run dir, refuse an existing run, clean stale writes -> the lock, or None."""
    if not is_main():
        return None
    lock = lock_run_dir(args.output_dir)
    found = [f for f in RUN_FILES if os.path.exists(os.path.join(args.output_dir, f))]
    if found and args.resume == "auto" and "last.pt" not in found:
        # last.pt is written last in an epoch: without it and without a record past epoch 0 or
        # a final.pt, the run was stopped in its first epoch; else its last.pt was removed
        logged = [r.get("epoch", 0) for r in read_lines(os.path.join(args.output_dir, "log.jsonl"))]
        if "final.pt" in found or max(logged, default=0) > 0:
            raise ValueError(f"--output-dir {args.output_dir} holds a run ({', '.join(found)}) "
                             "without its last.pt, the point --resume continues from: choose "
                             "another --output-dir (best.pt / final.pt can start a run with "
                             "--init-from)")
        print0(f"--resume auto: {args.output_dir} holds no last.pt (a run stopped before its "
               f"first epoch ended): starting it afresh")
        for name in found:
            os.remove(os.path.join(args.output_dir, name))
        found = []
    if found and args.resume in (None, "auto"):
        raise ValueError(f"--output-dir {args.output_dir} already holds a run ({', '.join(found)}):"
                         " continue it with --resume auto, or choose another --output-dir")
    stale = glob.glob(os.path.join(args.output_dir, "*.pt.tmp.*"))  # writes of a killed run
    for path in stale:
        os.remove(path)
    if stale:
        print0(f"removed {len(stale)} unfinished checkpoint write(s) of an earlier run: "
               f"{', '.join(os.path.basename(p) for p in stale)}")
    return lock


def resume_state(ckpt, path, model, optimizer, scheduler, scaler):
    """Load a full checkpoint (read from `path`) into the run's objects -> (next epoch, best AP)."""
    changed = sorted(k for k in set(model.cfg) | set(ckpt["model_config"])
                     if model.cfg.get(k) != ckpt["model_config"].get(k))
    if changed:
        raise ValueError(f"--resume {path}: the run's model differs ({', '.join(changed)})")
    model.load_state_dict(ckpt["model"], strict=True)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    print0(f"resumed {path}: continuing at epoch {ckpt['epoch'] + 1}, best "
           f"{ckpt.get('selected_by', 'val_AP')} {ckpt['best_ap']:.4g}")
    return ckpt["epoch"] + 1, ckpt["best_ap"]
