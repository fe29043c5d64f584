"""What PromptPose costs over SimpleBaseline in this implementation, measured side by side.

    python benchmark.py                      # all sections, full-size models; updates BENCHMARKS.md
    python benchmark.py --quick              # small models, 64x64 crops: a smoke run, prints only
    python benchmark.py --sections train,text --reps 5
    python benchmark.py --amp bf16 --compile --peak-tflops 989   # on a GPU, as train.py runs there

The code measured is the project's: train.train_step with train.py's optimiser, schedule,
GradScaler, loss weights and compilation for its default flags; predict.predict_heatmaps and
predict_dataset; KeypointDataset and make_loader on synthetic 1024x768 AP-10K photos;
video.analyze_video on a 640x480 video of them; random weights (speed does not depend on them).
Contenders run round-robin (A B, B A, ...) after --warmup rounds, so a load change on a shared
machine hits both; ratios are per round, shown as median [min, max], rates as median (min-max).
FLOPs: FlopCounterMode on an extra eager call (matmuls, convolutions, attention; not element-wise
work)."""
import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
import torch
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

import recipe
import train
from clip_text import tokenize
from backbones import ResNet50, build_clip_visual
from dataset import KeypointDataset, make_loader
from distributed import HelpFormatter, input_size, number_list, positive, run_cli
from keypoints import AP10K_FLIP_PAIRS, AP10K_KEYPOINTS, AP10K_SKELETON
from model import AMP_DTYPES, PromptLearner, build_model, default_config
from predict import Predictor, predict_dataset, predict_heatmaps
from synthetic import generate
from video import analyze_video

BACKBONES = ("clip-rn50", "clip-vitb16")
METHODS = ("baseline", "promptpose")
HERE = os.path.dirname(os.path.abspath(__file__))


def get_args_parser():
    p = argparse.ArgumentParser("PromptPose benchmark", formatter_class=HelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument("--quick", action="store_true", help="smoke run: small models, 64x64 crops, "
                   "batch 2, 1 round; meaningless numbers, BENCHMARKS.md not written")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--batch-size", type=positive(int), help="default 8 (quick: 2)")
    p.add_argument("--input-size", type=input_size, help="HEIGHT[xWIDTH], default 256")
    p.add_argument("--memory-batch-sizes", type=number_list(int),
                   help="memory section (default 16,32,64 on GPU, 8,16 on CPU; quick: batch size)")
    p.add_argument("--amp", choices=list(AMP_DTYPES), default="none", help="as train.py --amp")
    p.add_argument("--compile", action="store_true", help="torch.compile as train.py --compile")
    p.add_argument("--peak-tflops", type=float, help="device's dense peak TFLOP/s: adds MFU")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    p.add_argument("--reps", type=positive(int), help="timed rounds, default 3 (quick: 1); "
                   "twice as many for inference, backbones and the prompt pass")
    p.add_argument("--output", help="file whose generated block is replaced (default: "
                   "BENCHMARKS.md; none for --quick)")
    p.add_argument("--no-write", action="store_true", help="print only")
    return p


# ----------------------------------------------------------------------------- timing
def measure(contenders, device, warmup, reps):
    """Time callables {name: fn} round-robin, the order rotating by one each round, after
    `warmup` untimed rounds. -> {name: [seconds] * reps}."""
    names, times = list(contenders), {name: [] for name in contenders}
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for r in range(-warmup, reps):  # r < 0: warm-up
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync()
            start = time.perf_counter()
            contenders[name]()
            sync()
            if r >= 0:
                times[name].append(time.perf_counter() - start)
    return times


def flop_count(fn):
    """FLOPs of a steady-state call of fn (FlopCounterMode): an uncounted call fills caches."""
    fn()
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def rate(times, n):
    """n items per call -> ('median (min-max)' items/s, median)."""
    r = sorted(n / t for t in times)
    return f"{statistics.median(r):.3g} ({r[0]:.3g}-{r[-1]:.3g})", statistics.median(r)


def ratio(a, b):
    """Per-round ratios a[i] / b[i] -> ('median [min, max]', median)."""
    r = sorted(x / y for x, y in zip(a, b))
    return f"{statistics.median(r):.3f} [{r[0]:.3f}, {r[-1]:.3f}]", statistics.median(r)


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


# ----------------------------------------------------------------------------- the real code
def make_model(backbone, method, small, image_size, device):
    torch.manual_seed(0)
    cfg = default_config(backbone, method, small=small, image_size=image_size)
    return build_model(cfg, AP10K_KEYPOINTS).to(device, memory_format=torch.channels_last)


def make_batch(data, cfg, batch_size, device):
    """batch_size training samples (cycling through the set), collated, on the device."""
    dataset = KeypointDataset(*data, train=True, inputs=cfg)
    batch = default_collate([dataset[i % len(dataset)] for i in range(batch_size)])
    return {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}


def train_step_fn(model, batch, amp, compile_model=False):
    """One iteration of train.py's loop, set up as train.py does for its default flags with
    this backbone and method: optimiser, LambdaLR schedule, GradScaler, Eq. 10 weights."""
    flags = ["--backbone", model.cfg["backbone"], "--method", model.cfg["method"], "--amp", amp]
    targs = train.get_args_parser().parse_args(flags + ["--compile"] * compile_model)
    optimizer = recipe.build_optimizer(model, targs.lr, targs.weight_decay,
                                      recipe.backbone_lr_mult(targs))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, recipe.lr_factor(
        1000, targs.warmup_iters, targs.warmup_ratio, targs.lr_steps))  # 1000 iters/epoch
    scaler = torch.amp.GradScaler(batch["image"].device.type, enabled=amp == "fp16")
    alphas = recipe.loss_weights(targs, model.cfg)
    run = train.wrap_model(model, targs, alphas, batch["image"].device, 0, 1)
    model.train()
    return lambda: train.train_step(run, batch, optimizer, scheduler, scaler, amp,
                                    targs.clip_grad, alphas, model.logit_scale)


def inference_fn(model, batch, amp, compile_model=False):
    """predict.predict_heatmaps of the batch, no flip, in eval mode (the prompt cache on)."""
    run = torch.compile(model) if compile_model else model
    model.eval()
    return lambda: predict_heatmaps(run, batch["image"], [], False, amp)


# ----------------------------------------------------------------------------- sections
def section_train(args, device, data):
    """PromptPose vs SimpleBaseline, same backbone: train step and inference."""
    B, rows = args.batch_size, []
    for backbone in BACKBONES:
        models = {m: make_model(backbone, m, args.quick, args.input_size, device) for m in METHODS}
        batch = make_batch(data, models["promptpose"].cfg, B, device)
        for mode, make_fn, goal, reps in (("train step", train_step_fn, 1.6, args.reps),
                                          ("inference", inference_fn, 1.25, 2 * args.reps)):
            fns = {m: make_fn(models[m], batch, args.amp, args.compile) for m in METHODS}
            # compiled graphs hide their ops from FlopCounterMode: count on eager calls
            flops = {m: flop_count(make_fn(models[m], batch, args.amp) if args.compile
                                   else fns[m]) for m in METHODS}
            t = measure(fns, device, args.warmup, reps)
            (sb, _), (pp, pp_med) = rate(t["baseline"], B), rate(t["promptpose"], B)
            r, r_med = ratio(t["promptpose"], t["baseline"])
            tflops = flops["promptpose"] * pp_med / B / 1e12
            mfu = f" ({100 * tflops / args.peak_tflops:.1f}% MFU)" if args.peak_tflops else ""
            rows.append([f"{mode} {backbone}", sb, pp, r,
                         f"{flops['promptpose'] / flops['baseline']:.3f}",
                         f"{flops['promptpose'] / B / 1e9:.1f}", f"{tflops:.3g}{mfu}",
                         f"<= {goal} {'met' if r_med <= goal else 'MISSED'}"])
    header = ["measurement", "SimpleBaseline img/s", "PromptPose img/s", "time ratio PP/SB",
              "FLOP ratio PP/SB", "PP GFLOP/img", "PP TFLOP/s", "goal"]
    return f"1. Train step and inference, PromptPose vs SimpleBaseline (batch {B})", header, rows


def backbone_pairs(size, device):
    """Yields (label, ours, reference): callables image -> features with identical weights;
    open_clip's towers are made at `size` (force_image_size) so no side resizes positions."""
    import open_clip  # requirements-dev.txt
    import torchvision
    ready = lambda m: m.to(device, memory_format=torch.channels_last).eval()  # noqa: E731
    torch.manual_seed(0)
    tv, ours = ready(torchvision.models.resnet50(weights=None)), ready(ResNet50())
    ours.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")},
                         strict=True)
    yield ("ResNet-50 vs torchvision (to layer4)", lambda x: ours(x)[0], lambda x: tv.layer4(
        tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x)))))))))
    for name, label in (("RN50-quickgelu", "CLIP RN50"), ("ViT-B-16-quickgelu", "CLIP ViT-B/16")):
        ref = ready(open_clip.create_model(name, pretrained=None, force_image_size=size).visual)
        tower = ready(build_clip_visual({f"visual.{k}": v for k, v in ref.state_dict().items()},
                                        size))
        yield f"{label} tower vs open_clip", lambda x: tower(x)[1], ref


def section_backbones(args, device, data):
    """Hand-written towers vs the references, inference, same weights, channels_last."""
    B, S = args.batch_size, args.input_size[0]
    x, rows = torch.randn(B, 3, S, S).to(device, memory_format=torch.channels_last), []
    for label, ours, ref in backbone_pairs(S, device):
        with torch.no_grad():
            diff = (ours(x) - ref(x)).abs().max().item()
            t = measure({"ours": lambda: ours(x), "ref": lambda: ref(x)}, device, args.warmup,
                        2 * args.reps)
        r, r_med = ratio(t["ours"], t["ref"])
        # autograd on, batch 1: under no_grad open_clip's nn.MultiheadAttention takes a fused
        # fast path whose projections FlopCounterMode does not see
        f = flop_count(lambda: ours(x[:1])) / flop_count(lambda: ref(x[:1]))
        rows.append([label, rate(t["ours"], B)[0], rate(t["ref"], B)[0], r, f"{f:.3f}",
                     f"{diff:.1e}", f"<= 1.05 {'met' if r_med <= 1.05 else 'MISSED'}"])
    header = ["ours vs reference", "ours img/s", "reference img/s", "time ratio", "FLOP ratio",
              "max abs diff", "goal"]
    return (f"2. Hand-written backbones vs references (inference, batch {B}, {S}x{S}; our CLIP "
            f"towers also return the dense embedding: the FLOP ratio shows it)", header, rows)


def section_text(args, device, data):
    """The exact-length prompt pass of model.PromptLearner (forward + backward) vs the same
    prompts over all 77 positions, as CoOp / DenseCLIP run them."""
    model = make_model("clip-rn50", "promptpose", args.quick, args.input_size, device)
    learner = model.prompt_learner
    full = PromptLearner(learner.text_encoder, learner.prompt_texts, learner.n_ctx).to(device)
    full.ctx = learner.ctx  # the same context vectors, the texts padded to 77 - n_ctx tokens:
    full.text_tokens = tokenize(learner.prompt_texts, 77 - learner.n_ctx).to(device)
    with torch.no_grad():
        diff = (learner() - full()).abs().max().item()
    t = measure({"exact": lambda: learner().sum().backward(),
                 "77": lambda: full().sum().backward()}, device, args.warmup, 2 * args.reps)
    ms = {k: f"{1e3 * statistics.median(v):.1f} ms" for k, v in t.items()}
    rows = [[f"prompt pass fwd+bwd, exact length {learner.text_tokens.shape[1] + learner.n_ctx} vs "
             f"77 tokens ({len(learner.prompt_texts)} prompts)", f"{ms['exact']} vs {ms['77']}",
             ratio(t["exact"], t["77"])[0], f"max abs diff {diff:.1e}"]]
    return (f"3. Text side, {'small' if args.quick else 'full-size'} CLIP text encoder",
            ["measurement", "median times", "ratio", "note"], rows)


def section_data(args, device, data):
    """One pass of make_loader(workers=0) with OpenCV's thread pool off and one torch thread,
    as in a DataLoader worker: the rate of one loader process, decoding at full resolution
    (the default, the authors') and with --reduced-jpeg-decode."""
    cfg = default_config("clip-rn50", "promptpose", small=args.quick, image_size=args.input_size)
    loaders = {f"{m}, {d}": make_loader(KeypointDataset(*data, train=augment, inputs=cfg,
                                                        reduced_decode=d == "reduced decode"),
                                        args.batch_size, 0, shuffle=False)
               for m, augment in (("train (augmented)", True), ("eval", False))
               for d in ("full decode", "reduced decode")}
    threads = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(0), torch.set_num_threads(1)
    try:
        t = measure({m: lambda lo=lo: list(lo) for m, lo in loaders.items()},
                    torch.device("cpu"), args.warmup, args.reps)
    finally:
        cv2.setNumThreads(threads[0]), torch.set_num_threads(threads[1])
    files = [os.path.join(data[1], f) for f in os.listdir(data[1])]
    (h, w), kb = cv2.imread(files[0]).shape[:2], statistics.mean(map(os.path.getsize, files)) / 1024
    rows = [[f"{w}x{h} JPEG (~{kb:.0f} KB), {m}", len(lo.dataset), rate(t[m], len(lo.dataset))[0],
             f"{1e3 * statistics.median(t[m]) / len(lo.dataset):.1f}"] for m, lo in loaders.items()]
    return (f"4. Data loading: make_loader(workers=0) over KeypointDataset, one process, "
            f"{cfg['image_size'][0]}x{cfg['image_size'][1]} crops",
            ["data (one process)", "samples", "samples/s", "ms/sample"], rows)


def section_eval(args, device, data):
    model = make_model("clip-rn50", "promptpose", args.quick, args.input_size, device)
    ds = KeypointDataset(*data, train=False, inputs=model.cfg)
    t = measure({flip: lambda flip=flip: predict_dataset(
        model, ds, batch_size=args.batch_size, workers=0, flip=flip, amp=args.amp, device=device)
        for flip in (True, False)}, device, args.warmup, args.reps)
    rows = [[f"predict_dataset, flip test {'on' if flip else 'off'}", rate(t[flip], len(ds))[0],
             ratio(t[True], t[False])[0] if flip else ""] for flip in (True, False)]
    return (f"5. Evaluation, PromptPose clip-rn50, {len(ds)} instances, batch {args.batch_size}, "
            f"loader in this process", ["evaluation", "img/s", "time ratio flip on / off"], rows)


def memory_child(backbone, method, batch_size, image_size, small, amp, device, data):
    """In a fresh process: one model, two train steps (the second holds AdamW state, gradients
    and activations at once); prints the peak in MiB: torch.cuda.max_memory_allocated, or on
    CPU the process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    device = torch.device(device)
    model = make_model(backbone, method, small, image_size, device)
    step = train_step_fn(model, make_batch(data, model.cfg, batch_size, device), amp)
    step(), step()
    if device.type == "cuda":
        print(torch.cuda.max_memory_allocated(device) / 2**20)
    else:
        with open("/proc/self/status") as f:  # Linux
            print(next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:")))


def section_memory(args, device, data):
    """memory_child in a fresh process per model and batch size."""
    code = "import json, sys, benchmark; benchmark.memory_child(**json.loads(sys.argv[1]))"
    rows = []
    for backbone, method in [(b, m) for b in BACKBONES for m in METHODS]:
        rows.append([f"{method} {backbone}"])
        for b in args.memory_batch_sizes:
            spec = dict(backbone=backbone, method=method, batch_size=b, small=args.quick,
                        image_size=args.input_size, amp=args.amp, device=str(device), data=data)
            run = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], cwd=HERE,
                                 capture_output=True, text=True)
            if run.returncode and "out of memory" not in run.stderr:
                raise RuntimeError(f"memory run {spec} failed:\n{run.stderr[-3000:]}")
            rows[-1].append(f"{float(run.stdout.split()[0]):.0f}" if run.returncode == 0
                            else "out of memory")
    what = "max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM)"
    return (f"6. Peak memory of two train steps, {what} MiB, a fresh process per cell",
            ["model"] + [f"batch {b}" for b in args.memory_batch_sizes], rows)


def write_test_video(path, data, frames, size=(640, 480)):
    """An mp4v video of the synthetic photos resized to `size` (cycling) and a --boxes file of
    their first animal's box -> (the boxes' path, [(frame, box)] as written)."""
    ann = json.load(open(data[0]))
    first = {a["image_id"]: a["bbox"] for a in reversed(ann["annotations"])}
    writer, written = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 30.0, size), []
    for n in range(frames):
        image = ann["images"][n % len(ann["images"])]
        fx, fy = size[0] / image["width"], size[1] / image["height"]
        frame = cv2.resize(cv2.imread(os.path.join(data[1], image["file_name"])), size)
        writer.write(frame)
        x, y, w, h = first[image["id"]]
        written.append((frame, [x * fx, y * fy, w * fx, h * fy]))
    writer.release()
    with open(path + ".boxes.json", "w") as f:
        json.dump([{"frame": n, "bbox": box} for n, (_, box) in enumerate(written)], f)
    return path + ".boxes.json", written


def section_video(args, device, data):
    """video.analyze_video with --boxes (decoding, crops, model, drawing, encoding, the json, csv
    and figure) vs the model alone (predict_heatmaps with the flip test on as many crops, already
    made) at the same batch size, round-robin; then the default search once. (--follow is left
    out: with random weights no pose is ever sure enough to follow; it would measure the search.)"""
    model = make_model("clip-rn50", "promptpose", args.quick, args.input_size, device)
    ckpt = {"keypoint_names": AP10K_KEYPOINTS, "flip_pairs": AP10K_FLIP_PAIRS,
            "skeleton": [[a - 1, b - 1] for a, b in AP10K_SKELETON], "model_config": model.cfg}
    B, frames = args.batch_size, 4 * args.batch_size
    predictor = Predictor.from_checkpoint(model, ckpt, True, args.amp, device, B)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "clip.mp4")
        boxes, written = write_test_video(path, data, frames)
        crops = torch.from_numpy(np.stack([predictor.crop(frame, box)[0]
                                           for frame, box in written[:B]])).to(device)
        run = lambda mode, given=None, n=None: analyze_video(  # noqa: E731
            predictor, ckpt, path, tmp, (0, n) if n else None, given, mode)
        t = measure({"video": lambda: run("search", boxes),
                     "model": lambda: [predict_heatmaps(model, crops, AP10K_FLIP_PAIRS, True,
                                                        args.amp) for _ in range(frames // B)]},
                    device, args.warmup, args.reps)
        search = measure({"search": lambda: run("search", n=2)}, device, 0, 1)["search"]
    r, r_med = ratio(t["video"], t["model"])
    rows = [["video path, --boxes (one crop a frame)", rate(t["video"], frames)[0], r,
             f"<= 1.10 {'met' if r_med <= 1.10 else 'MISSED'}"],
            ["model alone, same crops (predict_heatmaps, flip test)", rate(t["model"], frames)[0],
             "", ""],
            ["video path, default search (51 window crops a frame)", rate(search, 2)[0], "", ""]]
    return (f"7. Video, PromptPose clip-rn50, 640x480 mp4v, {frames} frames, batch {B}, "
            f"flip test", ["video", "frames/s", "time ratio video / model", "goal"], rows)


# ----------------------------------------------------------------------------- report
def describe_run(args, device):
    with open("/proc/cpuinfo") as f:  # Linux
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                   platform.machine())
    gpu = f"GPU {torch.cuda.get_device_name(device)}; " if device.type == "cuda" else ""
    return (f"{'Quick smoke run (small models; not meaningful). ' if args.quick else ''}Device "
            f"{device}: {gpu}CPU {cpu}, {os.cpu_count()} logical cores, {torch.get_num_threads()} "
            f"torch threads; torch {torch.__version__}; python {platform.python_version()}. "
            f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}. Input {args.input_size[0]}"
            f"x{args.input_size[1]}, amp {args.amp}, compile {args.compile}, {args.warmup} warm-up "
            f"+ {args.reps} timed rounds per comparison ({2 * args.reps} for inference, backbones "
            f"and the prompt pass).")


def write_results(path, device, text):
    """Replace (or append) this device type's block in the markdown file; notes outside it stay."""
    begin, end = (f"<!-- benchmark.py {device.type}: {w} -->" for w in ("begin", "end"))
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    block = f"{begin}\n{text}\n{end}"
    new = (old[:old.index(begin)] + block + old[old.index(end) + len(end):]
           if begin in old and end in old else old.rstrip("\n") + f"\n\n{block}\n")
    with open(path, "w") as f:
        f.write(new)


SECTIONS = {"train": section_train, "backbones": section_backbones, "text": section_text,
            "data": section_data, "eval": section_eval, "memory": section_memory,
            "video": section_video}


def main(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.batch_size = args.batch_size or (2 if args.quick else 8)
    args.input_size = args.input_size or ([64, 64] if args.quick else [256, 256])
    args.reps = args.reps or (1 if args.quick else 3)
    args.memory_batch_sizes = args.memory_batch_sizes or (
        [args.batch_size] if args.quick else [16, 32, 64] if device.type == "cuda" else [8, 16])
    sections = [s for s in args.sections.split(",") if s]
    if not sections or set(sections) - set(SECTIONS):
        raise ValueError(f"--sections {args.sections}: choose from {','.join(SECTIONS)}")
    if "backbones" in sections and importlib.util.find_spec("open_clip") is None:
        raise ValueError("the backbones section compares with open_clip: pip install -r "
                         "requirements-dev.txt, or leave it out (--sections "
                         f"{','.join(s for s in SECTIONS if s != 'backbones')})")
    started, blocks, header = time.time(), [], describe_run(args, device)
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        # synthetic AP-10K photos: 1024x768 JPEGs of ~240 KB (textured like real photos)
        data = (generate(tmp, 0, 4 if args.quick else 24, seed=0, image_size=(1024, 768))[1],
                os.path.join(tmp, "data"))
        for name in sections:
            t0, (title, cols, rows) = time.time(), SECTIONS[name](args, device, data)
            blocks.append(f"### {title} ({time.time() - t0:.0f} s)\n\n{markdown_table(cols, rows)}")
            print("\n" + blocks[-1], flush=True)
    text = (f"## {device.type.upper()} run: `{' '.join(['python benchmark.py'] + sys.argv[1:])}`"
            f"\n\n{header} Total {time.time() - started:.0f} s.\n\n" + "\n\n".join(blocks))
    output = args.output or (None if args.quick else os.path.join(HERE, "BENCHMARKS.md"))
    if output and not args.no_write:
        write_results(output, device, text)
        print(f"\nwrote {output}")


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args)
