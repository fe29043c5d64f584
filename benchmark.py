"""What PromptPose costs in this implementation, measured side by side (issue 6).

    python benchmark.py                      # every section, full-size models; updates BENCHMARKS.md
    python benchmark.py --quick              # small models, tiny inputs: a smoke run (~1 min)
    python benchmark.py --sections train,text --reps 5
    python benchmark.py --amp bf16 --compile # on a GPU: the settings train.py would use

Sections (each prints one markdown table):
  train      train step (forward + L_total + backward + AdamW) and inference, images/s,
             PromptPose / SimpleBaseline time ratio next to their FLOP ratio
  backbones  our hand-written towers vs torchvision / open_clip, same weights, same memory format
  text       exact-length prompt pass vs the 77-token pass; the text path's share of a step
  data       samples/s of one loader process (KeypointDataset) on 1024x768 JPEGs and synthetic data
  eval       images/s of evaluate.predict_dataset with / without flip test; text cache on / off
  memory     peak memory of a train step (RSS on CPU, max_memory_allocated on GPU), one
             fresh process per model
  opt        the optimisations this file proves: channels_last, fused AdamW, bf16 autocast

Timing protocol: contenders of one comparison run round-robin (A B, B A, A B, ...) after
warm-up rounds (3 timed rounds for train steps, 6 for cheaper calls), so a load change on a
shared machine hits both; a ratio is computed per round and reported as median [min, max]
over rounds; a rate as median (min-max). FLOPs are counted by
torch.utils.flop_counter.FlopCounterMode on the last warm-up round (matmuls, convolutions and
attention; element-wise ops are not counted). Models are randomly initialised
(default_config + build_model): speed does not depend on the weights.
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from clip_text import PromptLearner, TextEncoder, tokenize
from dataset import AP10K_KEYPOINTS, KeypointDataset
from evaluate import image_normalization, predict_batch, predict_dataset
from losses import default_loss_weights, total_loss
from model import ResNet50, build_clip_visual, build_model, default_config
from train import param_groups

SECTIONS = ("train", "backbones", "text", "data", "eval", "memory", "opt")
BACKBONES = ("clip-rn50", "clip-vitb16")
RESULTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "BENCHMARKS.md")


def get_args_parser():
    p = argparse.ArgumentParser("PromptPose benchmark", add_help=True)
    g = p.add_argument_group("what")
    g.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    g.add_argument("--quick", action="store_true",
                   help="smoke run: small models, 128x128 crops, batch 4, 2 repetitions; "
                        "numbers are not meaningful and BENCHMARKS.md is not written")
    g = p.add_argument_group("setting")
    g.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    g.add_argument("--batch-size", type=int, default=None, help="default 8 (quick: 4)")
    g.add_argument("--input-size", type=int, default=None, help="square crop, default 256 (quick: 128)")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep models and images contiguous (default: channels_last, as train.py)")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                   help="autocast dtype of the train / eval / memory sections (as train.py --amp)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the models of the train section (as train.py --compile)")
    g.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense peak TFLOP/s at the chosen precision: adds model "
                        "FLOP utilisation (MFU) of the train step")
    g = p.add_argument_group("protocol")
    g.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    g.add_argument("--reps", type=int, default=None,
                   help="timed rounds of a train-step comparison, default 3 (quick: 2); "
                        "the cheaper inference-only comparisons run twice as many")
    g = p.add_argument_group("output")
    g.add_argument("--output", default=None,
                   help=f"markdown file whose generated block is replaced (default: "
                        f"{os.path.basename(RESULTS_FILE)} for full runs, none for --quick)")
    g.add_argument("--no-write", action="store_true", help="print only")
    g.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)  # BACKBONE:METHOD
    return p


# ----------------------------------------------------------------------------- timing
def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(contenders, device, warmup, reps, count_flops=False):
    """Time callables side by side. contenders {name: fn}; each round runs every fn once, the
    order rotating by one each round. `warmup` untimed rounds first (the last one under
    FlopCounterMode when count_flops). Returns ({name: [seconds] * reps}, {name: flops})."""
    names = list(contenders)
    flops = {}
    rounds = max(warmup, 1) if count_flops else warmup
    for w in range(rounds):
        for name in names:
            if count_flops and w == rounds - 1:
                flops[name] = flop_count(contenders[name])
            else:
                contenders[name]()
    times = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            synchronize(device)
            start = time.perf_counter()
            contenders[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times, flops


def flop_count(fn):
    """FLOPs of one call of fn, by FlopCounterMode (it also runs the call)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def rate(times, n):
    """n items per call -> 'median (min-max)' items/s and the median."""
    rates = sorted(n / t for t in times)
    med = statistics.median(rates)
    return f"{med:.3g} ({rates[0]:.3g}-{rates[-1]:.3g})", med


def ratio(a, b):
    """Per-round ratio a[i] / b[i] of two time lists -> 'median [min, max]' and the median."""
    r = sorted(x / y for x, y in zip(a, b))
    med = statistics.median(r)
    return f"{med:.3f} [{r[0]:.3f}, {r[-1]:.3f}]", med


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- models and steps
def bench_config(backbone, method, args):
    """Full-size architecture (small with --quick) at the benchmark's input size."""
    return default_config(backbone, method, small=args.quick,
                          image_size=[args.input_size, args.input_size])


def make_model(backbone, method, args, device, seed=0):
    torch.manual_seed(seed)
    model = build_model(bench_config(backbone, method, args), AP10K_KEYPOINTS).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_batch(args, device, seed=0):
    """A random batch shaped like KeypointDataset's collated output (random targets: the
    loss value does not matter for speed), every keypoint visible."""
    g = torch.Generator().manual_seed(seed)
    B, S, K = args.batch_size, args.input_size, len(AP10K_KEYPOINTS)
    h = S // 4
    images = torch.randn(B, 3, S, S, generator=g)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    batch = {"image": images, "target": torch.rand(B, K, h, h, generator=g),
             "target_weight": torch.ones(B, K), "keypoints": torch.rand(B, K, 2, generator=g) * (h - 1)}
    return {k: v.to(device) for k, v in batch.items()}


def autocast(device, amp):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def make_optimizer(model, backbone, fused=None):
    """AdamW over train.py's parameter groups (default lr / weight decay)."""
    opts = argparse.Namespace(lr=5e-4, weight_decay=1e-4)
    groups = param_groups(model, opts, 0.1 if backbone == "clip-vitb16" else 1.0)
    return torch.optim.AdamW(groups, lr=opts.lr, fused=fused)


def train_step_fn(model, backbone, method, batch, args, device, fused=None, compiled=None):
    """One step of train.py's loop: autocast forward, L_total (Eq. 10), backward, AdamW
    (through a GradScaler for fp16, as train.py)."""
    optimizer = make_optimizer(model, backbone, fused)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    weights = default_loss_weights(backbone)
    alpha1, alpha2 = (0.0, 0.0) if method == "baseline" else (weights["alpha1"], weights["alpha2"])
    run = compiled or model

    def step():
        if not model.training:
            model.train()
        with autocast(device, args.amp):
            outputs = run(batch["image"])
        loss, _ = total_loss({k: v.float() for k, v in outputs.items()}, batch,
                             model.logit_scale, alpha1, alpha2)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step, optimizer


def inference_fn(model, images, args, device, compiled=None):
    run = compiled or model

    def infer():
        if model.training:
            model.eval()  # (eval() also drops the prompt cache: only when switching)
        with torch.no_grad(), autocast(device, args.amp):
            run(images)
    return infer


# ----------------------------------------------------------------------------- 1. train / inference
def section_train(args, device, results):
    """PromptPose vs SimpleBaseline, same backbone: train step and inference."""
    B = args.batch_size
    rows = []
    for backbone in BACKBONES:
        models = {m: make_model(backbone, m, args, device) for m in ("baseline", "promptpose")}
        batch = make_batch(args, device)
        compiled = {m: torch.compile(models[m]) if args.compile else None for m in models}
        steps = {m: train_step_fn(models[m], backbone, m, batch, args, device,
                                  compiled=compiled[m])[0] for m in models}
        # FLOPs are counted on a warm-up round, or (compiled graphs hide their ops from
        # FlopCounterMode) on extra eager calls
        t_train, f_train = measure(steps, device, args.warmup, args.reps, not args.compile)
        infers = {m: inference_fn(models[m], batch["image"], args, device, compiled[m])
                  for m in models}
        # 2 warm-up rounds: the first fills the prompt cache, the second is the steady state
        t_inf, f_inf = measure(infers, device, max(args.warmup, 2), 2 * args.reps, not args.compile)
        if args.compile:
            f_train = {m: flop_count(train_step_fn(models[m], backbone, m, batch, args, device)[0])
                       for m in models}
            f_inf = {m: flop_count(inference_fn(models[m], batch["image"], args, device))
                     for m in models}
        for mode, t, f in (("train step", t_train, f_train), ("inference", t_inf, f_inf)):
            sb, sb_med = rate(t["baseline"], B)
            pp, pp_med = rate(t["promptpose"], B)
            r, r_med = ratio(t["promptpose"], t["baseline"])
            goal = 1.6 if mode == "train step" else 1.25
            achieved = f["promptpose"] / statistics.median(t["promptpose"]) / 1e12
            mfu = f" ({100 * achieved / args.peak_tflops:.1f}% MFU)" if args.peak_tflops else ""
            rows.append([f"{mode} {backbone}", sb, pp, r, f"{f['promptpose'] / f['baseline']:.3f}",
                         f"{f['promptpose'] / B / 1e9:.1f}", f"{achieved:.3g}{mfu}",
                         f"<= {goal} {'met' if r_med <= goal else 'MISSED'}"])
            results[f"{mode} {backbone}"] = {"baseline_ips": sb_med, "promptpose_ips": pp_med,
                                             "ratio": r_med}
        del models, steps, infers, compiled
    header = ["measurement", "SimpleBaseline img/s", "PromptPose img/s",
              "time ratio PP/SB", "FLOP ratio PP/SB", "PP GFLOP/img", "PP TFLOP/s", "goal"]
    return ("1. Train step and inference, PromptPose vs SimpleBaseline "
            f"(batch {B}, {args.input_size}x{args.input_size})", header, rows)


# ----------------------------------------------------------------------------- 2. backbones
class TorchvisionTrunk(nn.Module):
    """torchvision resnet50 up to layer4 (no avgpool / fc): the features a pose head uses."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))


class OpenClipResNetTrunk(nn.Module):
    """open_clip's ModifiedResNet without its attention pool (stem + layer1..4)."""

    def __init__(self, visual):
        super().__init__()
        self.visual = visual

    def forward(self, x):
        v = self.visual
        return v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))


def backbone_pairs(args):
    """(name, ours, reference, note) with identical weights; open_clip models are created at
    the benchmark's input size (force_image_size) so neither side resizes positions."""
    import logging

    import torchvision
    try:
        import open_clip
    except ImportError as e:
        raise ValueError("the backbones section compares against open_clip: pip install -r "
                         "requirements-dev.txt, or leave the section out (--sections)") from e
    S = args.input_size
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None)
    ours = ResNet50()
    ours.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")},
                         strict=True)
    pairs = [("ResNet-50 vs torchvision (to layer4)", ours, TorchvisionTrunk(tv), "features")]
    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that no weights were loaded
    for name, label in (("RN50-quickgelu", "CLIP RN50"), ("ViT-B-16-quickgelu", "CLIP ViT-B/16")):
        ref = open_clip.create_model(name, pretrained=None, force_image_size=S).visual
        sd = {f"visual.{k}": v for k, v in ref.state_dict().items()}
        if label == "CLIP RN50":
            pairs.append((f"{label} trunk vs open_clip (no attnpool)",
                          build_clip_visual(sd, S, projector=False), OpenClipResNetTrunk(ref),
                          "features"))
        pairs.append((f"{label} tower vs open_clip", build_clip_visual(sd, S), ref, "global"))
    return pairs


def section_backbones(args, device, results):
    """Hand-written towers vs the references, inference, same weights and memory format."""
    B = args.batch_size
    x = torch.randn(B, 3, args.input_size, args.input_size, generator=torch.Generator().manual_seed(0))
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    x = x.to(device).contiguous(memory_format=mf)
    rows = []
    for label, ours, ref, kind in backbone_pairs(args):
        ours, ref = ours.to(device, memory_format=mf).eval(), ref.to(device, memory_format=mf).eval()
        with torch.no_grad():
            out = ours(x)
            got = out[0] if kind == "features" else out[1]
            diff = (got - ref(x)).abs().max().item()

        def run(m):
            def f():
                with torch.no_grad():
                    m(x)
            return f
        t, _ = measure({"ours": run(ours), "ref": run(ref)}, device, args.warmup, 2 * args.reps)
        r, r_med = ratio(t["ours"], t["ref"])
        # counted with autograd on, at batch 1: in no_grad eval nn.MultiheadAttention (open_clip's
        # ViT) takes a fused fast path whose projections FlopCounterMode does not see
        f = {k: flop_count(lambda m=m: m(x[:1])) for k, m in (("ours", ours), ("ref", ref))}
        rows.append([label, rate(t["ours"], B)[0], rate(t["ref"], B)[0], r,
                     f"{f['ours'] / f['ref']:.3f}", f"{diff:.1e}",
                     f"<= 1.05 {'met' if r_med <= 1.05 else 'MISSED'}"])
        results[f"backbone {label}"] = {"ratio": r_med}
        del ours, ref
    header = ["ours vs reference", "ours img/s", "reference img/s", "time ratio", "FLOP ratio",
              "max abs diff", "goal"]
    note = ("2. Hand-written backbones vs references (inference, batch "
            f"{B}, {args.input_size}x{args.input_size}, "
            f"{'channels_last' if args.channels_last else 'contiguous'} on both sides; "
            "our CLIP towers also return the dense embedding, the FLOP ratio shows any extra work)")
    return note, header, rows


# ----------------------------------------------------------------------------- 3. text side
def full_length_prompts(learner):
    """The prompts of `learner` run over all context_length (77) positions, as CoOp /
    DenseCLIP do: the reference the exact-length pass must equal. -> (K, embed_dim)."""
    te = learner.text_encoder
    names = tokenize(learner.keypoint_names, context_length=te.context_length - learner.n_ctx)
    names = te.token_embedding(names.to(learner.ctx.device))  # (K, 77 - n_ctx, width)
    ctx = learner.ctx.unsqueeze(0).expand(names.shape[0], -1, -1)  # (K, n_ctx, width)
    x = torch.cat([names[:, :1], ctx, names[:, 1:]], dim=1)  # (K, 77, width)
    return te.encode_embeddings(x, learner.eot_index)


def section_text(args, device, results):
    cfg = bench_config("clip-rn50", "promptpose", args)
    torch.manual_seed(0)
    learner = PromptLearner(TextEncoder(**cfg["text"]), AP10K_KEYPOINTS, cfg["n_ctx"],
                            cfg["ctx_init_std"]).to(device)
    with torch.no_grad():
        diff = (learner() - full_length_prompts(learner)).abs().max().item()

    def fwd_bwd(fn):
        def f():
            learner.ctx.grad = None
            fn().sum().backward()
        return f
    L = learner.name_tokens.shape[1] + learner.n_ctx
    t, _ = measure({"exact": fwd_bwd(learner), "full": fwd_bwd(lambda: full_length_prompts(learner))},
                   device, args.warmup, 2 * args.reps)
    r, r_med = ratio(t["exact"], t["full"])
    rows = [[f"prompt pass fwd+bwd, exact length L={L} vs 77 tokens "
             f"({len(AP10K_KEYPOINTS)} prompts)",
             f"{1e3 * statistics.median(t['exact']):.1f} ms vs {1e3 * statistics.median(t['full']):.1f} ms",
             r, f"max abs diff {diff:.1e}"]]
    results["text exact vs 77"] = {"ratio": r_med, "max_abs_diff": diff}

    # the whole text path of a train step: prompt learner + prompt encoder, forward + backward
    model = make_model("clip-rn50", "promptpose", args, device).train()
    batch = make_batch(args, device)
    step, _ = train_step_fn(model, "clip-rn50", "promptpose", batch, args, device)

    def text_path():
        model.prompt_embeddings().sum().backward()
    t, _ = measure({"text": text_path, "step": step}, device, args.warmup, args.reps)
    r, r_med = ratio(t["text"], t["step"])
    rows.append([f"text path (prompt learner + prompt encoder, fwd+bwd) / train step, "
                 f"PromptPose clip-rn50 batch {args.batch_size}",
                 f"{1e3 * statistics.median(t['text']):.1f} ms vs "
                 f"{1e3 * statistics.median(t['step']):.0f} ms", r,
                 "share of the step; constant in the batch size"])
    results["text share of step"] = {"ratio": r_med}
    header = ["measurement", "median times", "ratio", "note"]
    return f"3. Text side ({'small' if args.quick else 'full-size'} CLIP text encoder)", header, rows


# ----------------------------------------------------------------------------- 4. data
def photo_like_jpegs(out_dir, n, size=(1024, 768), seed=0):
    """n JPEGs of size (W, H) with photo-like statistics (smooth colour field, texture noise,
    a few shapes) and a matching one-instance-per-image AP-10K-format json. -> json path."""
    W, H = size
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, "data"), exist_ok=True)
    images, anns = [], []
    for i in range(1, n + 1):
        field = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (W, H),
                           interpolation=cv2.INTER_CUBIC).astype(np.float32)
        image = np.clip(field + rng.normal(0, 10, (H, W, 3)), 0, 255).astype(np.uint8)
        for _ in range(6):
            center = (int(rng.integers(0, W)), int(rng.integers(0, H)))
            axes = (int(rng.integers(20, 200)), int(rng.integers(20, 200)))
            cv2.ellipse(image, center, axes, float(rng.uniform(0, 180)), 0, 360,
                        tuple(int(c) for c in rng.integers(0, 256, 3)), -1, cv2.LINE_AA)
        name = f"{i:06d}.jpg"
        cv2.imwrite(os.path.join(out_dir, "data", name), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        bw, bh = rng.uniform(0.3, 0.8) * W, rng.uniform(0.3, 0.8) * H
        x0, y0 = rng.uniform(0, W - bw), rng.uniform(0, H - bh)
        kps = np.stack([rng.uniform(x0, x0 + bw, 17), rng.uniform(y0, y0 + bh, 17),
                        np.full(17, 2.0)], axis=1)
        images.append({"id": i, "file_name": name, "width": W, "height": H})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [x0, y0, bw, bh],
                     "area": bw * bh, "iscrowd": 0, "num_keypoints": 17,
                     "keypoints": [round(float(v), 2) for v in kps.ravel()]})
    path = os.path.join(out_dir, "photos.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": [
            {"id": 1, "name": "dog", "supercategory": "Canidae",
             "keypoints": list(AP10K_KEYPOINTS), "skeleton": []}]}, f)
    return path


def synthetic_set(args, tmp):
    """synthetic.generate's val split (cached in tmp for the data and eval sections)."""
    from synthetic import generate
    root = os.path.join(tmp, "synthetic")
    ann = os.path.join(root, "annotations", "ap10k-val-split1.json")
    if not os.path.exists(ann):
        generate(root, 0, 4 if args.quick else 16, seed=0)
    return ann, os.path.join(root, "data")


def section_data(args, device, results, tmp):
    """__getitem__ + default collate in this process with OpenCV's thread pool off, as in a
    DataLoader worker (dataset.py turns it off there): the rate of one loader process."""
    n_photos = 4 if args.quick else 24
    photos = photo_like_jpegs(os.path.join(tmp, "photos"), n_photos)
    kb = np.mean([os.path.getsize(os.path.join(tmp, "photos", "data", f)) for f in
                  os.listdir(os.path.join(tmp, "photos", "data"))]) / 1024
    syn_ann, syn_dir = synthetic_set(args, tmp)
    size = (args.input_size, args.input_size)
    hm = (args.input_size // 4, args.input_size // 4)
    sets = {}
    for label, ann, image_dir in ((f"1024x768 JPEG (~{kb:.0f} KB)", photos,
                                   os.path.join(tmp, "photos", "data")),
                                  ("synthetic 320x240", syn_ann, syn_dir)):
        for train in (True, False):
            sets[f"{label}, {'train (augmented)' if train else 'eval'}"] = KeypointDataset(
                ann, image_dir, train=train, image_size=size, heatmap_size=hm)
    collate = torch.utils.data.default_collate
    threads = cv2.getNumThreads()
    cv2.setNumThreads(0)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def epoch(ds):
        def f():
            for start in range(0, len(ds), args.batch_size):
                collate([ds[i] for i in range(start, min(start + args.batch_size, len(ds)))])
        return f
    try:
        t, _ = measure({k: epoch(ds) for k, ds in sets.items()}, torch.device("cpu"),
                       args.warmup, args.reps)
    finally:
        cv2.setNumThreads(threads)
        torch.set_num_threads(torch_threads)
    train_ips = results.get("train step clip-rn50", {}).get("promptpose_ips")
    rows = []
    for k, ds in sets.items():
        text, med = rate(t[k], len(ds))
        feeds = f"{med / train_ips:.1f}" if train_ips and "train" in k else ""
        rows.append([k, len(ds), text, f"{1e3 / med:.1f}", feeds])
        results[f"data {k}"] = {"samples_per_s": med}
    header = ["data (one process)", "samples", "samples/s", "ms/sample",
              "samples/s / PromptPose clip-rn50 train img/s (this device)"]
    return (f"4. Data loading: KeypointDataset.__getitem__ + collate, one process "
            f"({size[0]}x{size[1]} crops)", header, rows)


# ----------------------------------------------------------------------------- 5. evaluation
def section_eval(args, device, results, tmp):
    """evaluate.predict_dataset (loader in this process, workers=0) with and without flip test,
    and the prompt cache: eval() before each batch drops it, so the text path reruns."""
    ann, image_dir = synthetic_set(args, tmp)
    model = make_model("clip-rn50", "promptpose", args, device).eval()
    mean, std = image_normalization("clip-rn50")
    size, hm = (args.input_size, args.input_size), (args.input_size // 4, args.input_size // 4)
    ds = KeypointDataset(ann, image_dir, train=False, image_size=size, heatmap_size=hm,
                         mean=mean, std=std)

    def predict(flip):
        opts = argparse.Namespace(batch_size=args.batch_size, workers=0, flip_test=flip, amp=args.amp)
        return lambda: predict_dataset(model, ds, opts, device)
    t, _ = measure({"flip": predict(True), "noflip": predict(False)}, device, args.warmup, args.reps)
    rows = []
    for key, label in (("flip", "flip test on"), ("noflip", "flip test off")):
        text, med = rate(t[key], len(ds))
        rows.append([f"predict_dataset, {label}", text, ratio(t[key], t["noflip"])[0]])
        results[f"eval {label}"] = {"ips": med}
    batch = make_batch(args, device)

    def predict_batch_fn(cached):
        def f():
            if not cached:
                model.eval()  # train(False) drops the prompt cache
            predict_batch(model, batch["image"], [], False, args.amp)
        return f
    t, _ = measure({"cached": predict_batch_fn(True), "uncached": predict_batch_fn(False)},
                   device, args.warmup, 2 * args.reps)
    r, r_med = ratio(t["cached"], t["uncached"])
    rows.append(["predict_batch, text cached vs recomputed", rate(t["cached"], args.batch_size)[0], r])
    results["eval text cache"] = {"ratio": r_med}
    header = ["evaluation", "img/s", "time ratio (vs flip off / vs recomputed)"]
    return (f"5. Evaluation, {'small' if args.quick else 'full-size'} PromptPose clip-rn50, "
            f"{len(ds)} synthetic instances, batch {args.batch_size}", header, rows)


# ----------------------------------------------------------------------------- 6. memory
def proc_status_mib(field):
    """A memory field of /proc/self/status (Linux), e.g. VmRSS (now) or VmHWM (peak), MiB.
    Unlike getrusage's ru_maxrss, VmHWM is not inherited from the parent across fork."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    raise ValueError(f"/proc/self/status has no {field}")


def reset_peak_rss():
    """Reset VmHWM to the current RSS (writing 5 to /proc/self/clear_refs, Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # VmHWM then also covers model construction, which needs less than a step


def memory_child(args, device):
    """Runs in a fresh process: build one model, 2 train steps (the second holds AdamW state,
    gradients and activations at once); prints one json line."""
    backbone, method = args.memory_child.split(":")
    model = make_model(backbone, method, args, device)
    batch = make_batch(args, device)
    step, _ = train_step_fn(model, backbone, method, batch, args, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        step()
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        before = proc_status_mib("VmRSS")
        reset_peak_rss()
        step()
        step()
        peak = proc_status_mib("VmHWM")
    print(json.dumps({"before": before, "peak": peak}))


def section_memory(args, device, results):
    rows = []
    passed = ["--batch-size", str(args.batch_size), "--input-size", str(args.input_size),
              "--amp", args.amp, "--device", str(device)]
    passed += ["--quick"] if args.quick else []
    passed += [] if args.channels_last else ["--no-channels-last"]
    for backbone in BACKBONES:
        for method in ("baseline", "promptpose"):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child",
                                  f"{backbone}:{method}", *passed], capture_output=True,
                                 text=True, check=True)
            m = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append([f"{method} {backbone}", f"{m['peak']:.0f}", f"{m['before']:.0f}",
                         f"{m['peak'] - m['before']:.0f}"])
            results[f"memory {method} {backbone}"] = m
    what = "max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM)"
    header = ["model", f"{what} MiB", "after setup MiB", "added by the steps MiB"]
    return (f"6. Peak memory of a train step, batch {args.batch_size}, {what} "
            f"(fresh process per model, 2 steps)", header, rows)


# ----------------------------------------------------------------------------- 7. optimisations
def section_opt(args, device, results):
    """channels_last vs contiguous, fused vs default AdamW, bf16 autocast vs fp32."""
    B = args.batch_size
    rows = []
    backbone, method = "clip-rn50", "promptpose"
    variants = {}
    for cl in (True, False):
        a = argparse.Namespace(**{**vars(args), "channels_last": cl})
        model = make_model(backbone, method, a, device)
        batch = make_batch(a, device)
        variants[cl] = (model, batch, train_step_fn(model, backbone, method, batch, a, device)[0])
    t, _ = measure({cl: v[2] for cl, v in variants.items()}, device, args.warmup, args.reps)
    rows.append([f"channels_last vs contiguous, PromptPose {backbone} train step",
                 rate(t[True], B)[0], rate(t[False], B)[0], ratio(t[True], t[False])[0]])
    results["opt channels_last train"] = {"ratio": ratio(t[True], t[False])[1]}
    infer = {cl: inference_fn(v[0], v[1]["image"], args, device) for cl, v in variants.items()}
    t, _ = measure(infer, device, args.warmup, 2 * args.reps)
    rows.append([f"channels_last vs contiguous, PromptPose {backbone} inference",
                 rate(t[True], B)[0], rate(t[False], B)[0], ratio(t[True], t[False])[0]])
    results["opt channels_last inference"] = {"ratio": ratio(t[True], t[False])[1]}

    model, batch, _ = variants[args.channels_last]
    del variants
    optimizers = {}
    for fused in (True, False):
        step, opt = train_step_fn(model, backbone, method, batch, args, device, fused=fused or None)
        step()  # gradients and optimizer state exist
        optimizers[fused] = opt
    t, _ = measure({f: o.step for f, o in optimizers.items()}, device, args.warmup, 2 * args.reps)
    n = sum(p.numel() for g in optimizers[True].param_groups for p in g["params"])
    rows.append([f"AdamW step fused vs default, {n / 1e6:.1f}M parameters",
                 f"{1e3 * statistics.median(t[True]):.0f} ms", f"{1e3 * statistics.median(t[False]):.0f} ms",
                 ratio(t[True], t[False])[0]])
    results["opt fused adamw"] = {"ratio": ratio(t[True], t[False])[1]}

    # one image: CPUs without bf16 units (no AVX512-BF16 / AMX) run bf16 convolutions ~30x slower
    n_amp = 1 if device.type == "cpu" else B
    amp = {a: inference_fn(model, batch["image"][:n_amp], argparse.Namespace(amp=a), device)
           for a in ("bf16", "none")}
    t, _ = measure(amp, device, args.warmup, args.reps)
    rows.append([f"bf16 autocast vs fp32, PromptPose {backbone} inference, batch {n_amp}",
                 rate(t["bf16"], n_amp)[0], rate(t["none"], n_amp)[0], ratio(t["bf16"], t["none"])[0]])
    results["opt bf16 inference"] = {"ratio": ratio(t["bf16"], t["none"])[1]}
    header = ["optimisation", "with img/s (or time)", "without img/s (or time)",
              "time ratio with/without (< 1: faster)"]
    return f"7. Optimisations (batch {B}, {args.input_size}x{args.input_size})", header, rows


# ----------------------------------------------------------------------------- report
def machine_line(device):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        names = re.findall(r"^model name\s*:\s*(.*)$", info, re.M)
        flags = set(re.findall(r"^flags\s*:\s*(.*)$", info, re.M)[0].split())
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
        cpu = f"{names[0] if names else cpu} ({', '.join(isa) or 'no AVX2'})"
    except (OSError, IndexError):
        pass
    line = (f"CPU {cpu}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads; "
            f"torch {torch.__version__}; python {platform.python_version()}")
    if device.type == "cuda":
        line = f"GPU {torch.cuda.get_device_name(device)}; " + line
    return line


def write_results(path, device, text):
    """Replace (or append) this device type's generated block in the markdown file; text
    outside the blocks (notes written by people) is kept."""
    begin, end = f"<!-- benchmark.py {device.type}: begin -->", f"<!-- benchmark.py {device.type}: end -->"
    block = f"{begin}\n{text}\n{end}"
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(new)


def main(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.batch_size = args.batch_size or (4 if args.quick else 8)
    args.input_size = args.input_size or (128 if args.quick else 256)
    args.reps = args.reps or (2 if args.quick else 3)
    if args.memory_child:
        return memory_child(args, device)
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; choose from {','.join(SECTIONS)}")
    started = time.time()
    results, blocks = {}, []
    header = (f"{'Quick smoke run (small models; not meaningful). ' if args.quick else ''}"
              f"Device {device}: {machine_line(device)}. "
              f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}. "
              f"Memory format {'channels_last' if args.channels_last else 'contiguous'}, "
              f"amp {args.amp}, compile {args.compile}, {args.warmup} warm-up + {args.reps} "
              f"timed rounds per comparison ({2 * args.reps} for the cheap ones: inference, "
              f"backbones, prompt pass, optimizer step).")
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in sections:
            t0 = time.time()
            if name == "train":
                title, cols, rows = section_train(args, device, results)
            elif name == "backbones":
                title, cols, rows = section_backbones(args, device, results)
            elif name == "text":
                title, cols, rows = section_text(args, device, results)
            elif name == "data":
                title, cols, rows = section_data(args, device, results, tmp)
            elif name == "eval":
                title, cols, rows = section_eval(args, device, results, tmp)
            elif name == "memory":
                title, cols, rows = section_memory(args, device, results)
            else:
                title, cols, rows = section_opt(args, device, results)
            block = f"### {title}\n\n{markdown_table(cols, rows)}\n\n({time.time() - t0:.0f} s)"
            print("\n" + block, flush=True)
            blocks.append(block)
    command = "python benchmark.py " + " ".join(sys.argv[1:])
    text = (f"## {device.type.upper()} run: `{command.strip()}`\n\n{header} "
            f"Total {time.time() - started:.0f} s.\n\n" + "\n\n".join(blocks))
    output = args.output or (None if args.quick else RESULTS_FILE)
    if output and not args.no_write:
        write_results(output, device, text)
        print(f"\nwrote {output}")
    return results


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except ValueError as e:
        sys.exit(f"error: {e}")
