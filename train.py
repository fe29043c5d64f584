"""Train PromptPose or SimpleBaseline (paper Sec. 4.1) with plain torch.distributed.

    torchrun --nproc_per_node=8 train.py --backbone clip-rn50 --method promptpose \
        --clip-weights RN50.pt --train-ann ap10k/annotations/ap10k-train-split1.json \
        --val-ann ap10k/annotations/ap10k-val-split1.json --images ap10k/data --output-dir out
    python train.py ...            # same code, one process, no process group

Every epoch writes out/last.pt (and out/best.pt on a new best val AP) atomically, appends a
line to out/log.jsonl, and --resume out/last.pt continues at the next epoch with identical
state. `--batch-size` is per process: the paper's total batch 128 is 8 GPUs x 16.
"""
import argparse
import json
import math
import os
import random
import subprocess
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from clip_text import load_clip_state_dict
from dataset import KeypointDataset
from evaluate import (evaluate_dataset, format_report, image_normalization, init_distributed,
                      is_distributed, load_checkpoint)
from losses import default_loss_weights, total_loss
from model import build_model, default_config, load_imagenet_resnet


def get_args_parser():
    p = argparse.ArgumentParser("PromptPose training", add_help=True)
    g = p.add_argument_group("data")
    g.add_argument("--train-ann", required=True, help="COCO-format keypoint json for training")
    g.add_argument("--val-ann", required=True, help="COCO-format keypoint json for validation")
    g.add_argument("--images", required=True, help="directory the json file_names are relative to")
    g.add_argument("--val-images", default=None, help="image directory of --val-ann "
                                                      "(default: --images)")
    g.add_argument("--few-shot", type=int, default=None, metavar="K",
                   help="train on K images per species (Table 2/4: 20); default: all images")
    g.add_argument("--few-shot-seed", type=int, default=0,
                   help="seed of the few-shot draw; the chosen image ids are saved in the run")
    g.add_argument("--sigmas", default=None,
                   help="comma-separated OKS sigmas for a dataset that is neither AP-10K nor "
                        "COCO (default: the known ones, else 0.05 each with a warning)")
    g.add_argument("--workers", type=int, default=4, help="data loader processes per GPU")
    g = p.add_argument_group("model")
    g.add_argument("--backbone", choices=["clip-rn50", "clip-vitb16", "imagenet-rn50"],
                   default="clip-rn50", help="image encoder and its pre-training")
    g.add_argument("--method", choices=["promptpose", "baseline"], default="promptpose",
                   help="promptpose (Sec. 3.2) or SimpleBaseline (same backbone + head only)")
    g.add_argument("--clip-weights", default=None,
                   help="OpenAI CLIP checkpoint (RN50.pt / ViT-B-16.pt) for the clip-* backbones "
                        "and for the text encoder of promptpose")
    g.add_argument("--imagenet-weights", default=None,
                   help="torchvision resnet50 state dict (resnet50-*.pth) for imagenet-rn50")
    g.add_argument("--random-init", action="store_true",
                   help="train from random weights (no pre-training at all): demo/tests only")
    g.add_argument("--small", action="store_true",
                   help="a small architecture of the same structure, for CPU runs and tests "
                        "(pre-trained weights do not fit it: needs --random-init)")
    g.add_argument("--input-size", type=int, default=256,
                   help="square input crop size; heatmaps are 1/4 of it (paper: 256 -> 64)")
    g.add_argument("--n-ctx", type=int, default=8,
                   help="number of learnable context vectors [T]_1..[T]_k of Eq. 2")
    g.add_argument("--ctx-init-std", type=float, default=0.02,
                   help="std of the context vectors' init (CoOp 0.02; the authors used 1.0)")
    g.add_argument("--no-pixel", dest="use_pixel", action="store_false",
                   help="ablation: no pixel-level score map / L_pixel (Table 5)")
    g.add_argument("--no-prompt-encoder", dest="use_prompt_encoder", action="store_false",
                   help="ablation: no prompt encoder (Table 5)")
    g.add_argument("--no-cross-attn", dest="use_cross_attn", action="store_false",
                   help="ablation: no cross-attention of the prompts to the image")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes")
    g.add_argument("--init-from", default=None,
                   help="checkpoint of an earlier run (e.g. COCO human pre-training, Tables "
                        "3-4) whose matching tensors initialise this model")
    g = p.add_argument_group("loss (Eq. 10)")
    g.add_argument("--alpha1", type=float, default=None,
                   help="weight of L_semantic (default 0.0005; 0 turns the term off)")
    g.add_argument("--alpha2", type=float, default=None,
                   help="weight of L_pixel (default 0.4 for ResNet-50, 2.0 for ViT-B)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=210, help="total epochs")
    g.add_argument("--batch-size", type=int, default=16, help="batch size per process")
    g.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate")
    g.add_argument("--backbone-lr-mult", type=float, default=None,
                   help="lr multiplier of the image encoder (default 0.1 for ViT-B, else 1)")
    g.add_argument("--weight-decay", type=float, default=1e-4,
                   help="AdamW weight decay (never on norms, biases, embeddings, context)")
    g.add_argument("--warmup-iters", type=int, default=500,
                   help="linear warm-up iterations, starting at --warmup-ratio x lr")
    g.add_argument("--warmup-ratio", type=float, default=0.001, help="lr factor at iteration 0")
    g.add_argument("--lr-steps", default="170,200",
                   help="epochs at which the lr is multiplied by 0.1")
    g.add_argument("--clip-grad", type=float, default=0.0, help="max grad norm (0 = off)")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                   help="mixed precision on GPU (fp16 uses a GradScaler)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", default="output", help="checkpoints, log.jsonl, args.json")
    g.add_argument("--resume", default=None,
                   help="last.pt of an interrupted run: continue at its next epoch")
    g.add_argument("--seed", type=int, default=0, help="seed of everything random")
    g.add_argument("--eval-interval", type=int, default=10,
                   help="validate every N epochs (and after the last epoch)")
    g.add_argument("--eval-batch-size", type=int, default=32, help="batch size of validation")
    g.add_argument("--no-flip-test", dest="flip_test", action="store_false",
                   help="validate without the flip test")
    g.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    return p


# ----------------------------------------------------------------------------- helpers
def print0(*a, **k):
    if int(os.environ.get("RANK", "0")) == 0:
        print(*a, **k, flush=True)


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)),
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_checkpoint(obj, path):
    """Atomic write: a temp file in the same directory, fsync, then os.replace. A crash or a
    kill at any moment leaves either the old file or the new one, never a torn one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_weights(args, cfg):
    """Load the pre-trained state dicts the chosen backbone / method needs, or refuse."""
    needs_clip = cfg["backbone"].startswith("clip") or cfg["method"] == "promptpose"
    needs_imagenet = cfg["backbone"] == "imagenet-rn50"
    if args.random_init:
        if args.clip_weights or args.imagenet_weights:
            raise ValueError("--random-init contradicts --clip-weights/--imagenet-weights")
        print0("NOTE: --random-init: every weight is random (no CLIP / ImageNet pre-training); "
               "results are not comparable to the paper")
        return None, None
    if args.small:
        raise ValueError("--small builds a reduced architecture that pre-trained weights do "
                         "not fit: add --random-init")
    missing = []
    if needs_clip and not args.clip_weights:
        missing.append("--clip-weights RN50.pt/ViT-B-16.pt")
    if needs_imagenet and not args.imagenet_weights:
        missing.append("--imagenet-weights resnet50.pth")
    if missing:
        raise ValueError(f"--backbone {cfg['backbone']} --method {cfg['method']} needs "
                         f"{' and '.join(missing)} (or --random-init to train from scratch)")
    clip_sd = load_clip_state_dict(args.clip_weights) if needs_clip else None
    imagenet_sd = load_imagenet_resnet(args.imagenet_weights) if needs_imagenet else None
    return clip_sd, imagenet_sd


def keypoint_block(model, name, shape):
    """Where a tensor is indexed by keypoint: the offset of its K keypoint rows along dim 0,
    or None. These are the heads' last convolutions (one output channel per keypoint), the
    pixel head's first deconvolution (one input channel per score map S_n) and, with the
    pixel branch, the last K input channels of the keypoint head (F_fuse = F (+) S, Eq. 9)."""
    K = len(model.keypoint_names)
    if name in ("keypoint_head.final_layer.weight", "keypoint_head.final_layer.bias",
                "pixel_head.final_layer.weight", "pixel_head.final_layer.bias",
                "pixel_head.deconv_layers.0.weight"):
        return 0
    if name == "keypoint_head.deconv_layers.0.weight" and model.pixel_head is not None:
        return shape[0] - K
    return None


def init_from(model, path):
    """Initialise from another run's checkpoint (COCO human pre-training -> AP-10K, Tables
    3-4): every tensor whose name and shape match is copied. When the two runs have different
    keypoints, keypoint-indexed rows are matched by keypoint *name* (COCO and AP-10K share
    eyes, nose, shoulders, elbows, hips and knees) and the others keep their initialisation.
    Prints exactly what was loaded, remapped and skipped, and why."""
    ckpt = load_checkpoint(path)
    source, source_names = ckpt["model"], list(ckpt["keypoint_names"])
    names = list(model.keypoint_names)
    same_keypoints = source_names == names
    shared = [n for n in names if n in source_names]
    target = model.state_dict()
    loaded, remapped, skipped = [], [], []
    for name, tensor in source.items():
        if name not in target:
            skipped.append(f"{name}: not in this model")
            continue
        offset = None if same_keypoints else keypoint_block(model, name, target[name].shape)
        if offset is not None:
            src_offset = keypoint_block(model, name, tensor.shape)
            if tensor.shape[1:] != target[name].shape[1:] or src_offset != offset:
                skipped.append(f"{name}: shape {tuple(tensor.shape)} != {tuple(target[name].shape)}")
                continue
            new = target[name].clone()
            new[:offset] = tensor[:offset]                       # rows before the keypoints
            for j, n in enumerate(names):
                if n in source_names:
                    new[offset + j] = tensor[offset + source_names.index(n)]
            target[name] = new
            remapped.append(name)
        elif target[name].shape != tensor.shape:
            skipped.append(f"{name}: shape {tuple(tensor.shape)} != {tuple(target[name].shape)}")
        else:
            target[name] = tensor
            loaded.append(name)
    untouched = [n for n in target if n not in source]
    model.load_state_dict(target, strict=True)
    print0(f"--init-from {path}: loaded {len(loaded)} tensors, remapped {len(remapped)} by "
           f"keypoint name, skipped {len(skipped)}; {len(untouched)} of this model's tensors "
           f"keep their initialisation")
    if not same_keypoints:
        print0(f"  keypoints differ: {len(shared)} of {len(names)} shared by name {shared}; "
               f"the rows of the other {len(names) - len(shared)} keep their initialisation")
    for name in remapped:
        print0(f"  remapped {name}")
    for line in skipped:
        print0(f"  skipped {line}")
    for name in untouched:
        print0(f"  kept init {name}")
    return loaded, remapped, skipped


def param_groups(model, args, backbone_lr_mult):
    """AdamW groups: no weight decay on norms, biases, embeddings, context vectors and the
    temperature (every tensor with < 2 dims or a name saying so); the image encoder
    (`visual.*`) at lr x backbone_lr_mult."""
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = (param.ndim < 2 or name.endswith(".bias") or "embedding" in name
                    or name.endswith("prompt_learner.ctx") or name == "logit_scale")
        mult = backbone_lr_mult if name.startswith("visual.") else 1.0
        key = (no_decay, mult)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else args.weight_decay,
                           "lr": args.lr * mult, "lr_mult": mult}
        groups[key]["params"].append(param)
    return list(groups.values())


def lr_lambda(iters_per_epoch, args):
    """Linear warm-up from warmup_ratio over warmup_iters, then x0.1 at each step epoch."""
    steps = [int(s) for s in args.lr_steps.split(",") if s]

    def factor(it):
        epoch = it // iters_per_epoch
        step = 0.1 ** sum(epoch >= s for s in steps)
        if it < args.warmup_iters:
            return step * (args.warmup_ratio + (1 - args.warmup_ratio) * it / args.warmup_iters)
        return step
    return factor


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- training
def train_one_epoch(model, loader, optimizer, scheduler, scaler, args, alphas, logit_scale,
                    device, epoch):
    """One pass over the loader (`model` may be wrapped by DDP / torch.compile; logit_scale
    is the temperature of L_semantic or None). Returns the mean of each loss term over the
    epoch's samples, reduced across processes as sums and counts."""
    model.train()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # total, pred, pixel, semantic
    count = torch.zeros(1, dtype=torch.float64, device=device)
    batches = loader
    if int(os.environ.get("RANK", "0")) == 0:
        from tqdm import tqdm
        batches = tqdm(loader, desc=f"epoch {epoch}", leave=False, mininterval=5)
    for batch in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()
                 if torch.is_tensor(v)}
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            outputs = model(batch["image"])
        loss, terms = total_loss({k: v.float() for k, v in outputs.items()}, batch,
                                 logit_scale, *alphas)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"epoch {epoch}: loss is {loss.item()} ({terms}); "
                                     f"lower --lr or use --amp bf16 instead of fp16")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if args.clip_grad > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        n = batch["image"].shape[0]
        sums += n * torch.stack([loss.detach().double(), terms["pred"].detach().double(),
                                 terms["pixel"].detach().double(),
                                 terms["semantic"].detach().double()])
        count += n
    if is_distributed():
        dist.all_reduce(sums)
        dist.all_reduce(count)
    mean = (sums / count.clamp(min=1)).tolist()
    return dict(zip(["loss", "pred", "pixel", "semantic"], mean))


def main(args):
    rank, local_rank, world, device = init_distributed()
    if args.device:
        device = torch.device(args.device)
    last_ckpt = os.path.join(args.output_dir, "last.pt")
    if os.path.exists(last_ckpt) and not args.resume:  # never overwrite a run's checkpoints
        raise ValueError(f"--output-dir {args.output_dir} already holds a run ({last_ckpt}): "
                         f"pass --resume {last_ckpt} to continue it, or choose another "
                         f"--output-dir")
    seed_everything(args.seed + rank)
    if rank == 0:
        os.makedirs(args.output_dir, exist_ok=True)
    commit = git_commit()
    print0(f"git commit {commit}; {world} process(es) on {device}")
    print0(json.dumps(vars(args), indent=1))

    # data
    cfg = default_config(args.backbone, args.method, small=args.small)
    cfg.update(image_size=[args.input_size, args.input_size],
               heatmap_size=[args.input_size // 4, args.input_size // 4], n_ctx=args.n_ctx,
               ctx_init_std=args.ctx_init_std, use_pixel=args.use_pixel,
               use_prompt_encoder=args.use_prompt_encoder, use_cross_attn=args.use_cross_attn)
    mean, std = image_normalization(args.backbone)
    sigmas = [float(s) for s in args.sigmas.split(",")] if args.sigmas else None
    common = dict(image_size=tuple(cfg["image_size"][::-1]),  # model: [H, W]; dataset: (W, H)
                  heatmap_size=tuple(cfg["heatmap_size"][::-1]),
                  mean=mean, std=std, sigmas=sigmas)
    train_set = KeypointDataset(args.train_ann, args.images, train=True, few_shot=args.few_shot,
                                few_shot_seed=args.few_shot_seed, **common)
    val_set = KeypointDataset(args.val_ann, args.val_images or args.images, train=False,
                              **common)
    if list(train_set.keypoint_names) != list(val_set.keypoint_names):
        raise ValueError(f"--train-ann and --val-ann define different keypoints: "
                         f"{train_set.keypoint_names} vs {val_set.keypoint_names}")
    print0(f"train data: {train_set.skip_summary}\nval data: {val_set.skip_summary}")
    if rank == 0 and train_set.few_shot_image_ids is not None:
        with open(os.path.join(args.output_dir, "few_shot_image_ids.json"), "w") as f:
            json.dump(train_set.few_shot_image_ids, f)

    # model
    clip_sd, imagenet_sd = read_weights(args, cfg)
    model = build_model(cfg, train_set.keypoint_names, clip_state_dict=clip_sd,
                        imagenet_state_dict=imagenet_sd)
    if args.init_from:
        init_from(model, args.init_from)
    defaults = default_loss_weights(args.backbone)
    alpha1 = defaults["alpha1"] if args.alpha1 is None else args.alpha1
    alpha2 = defaults["alpha2"] if args.alpha2 is None else args.alpha2
    if args.method == "baseline" or not args.use_pixel:
        alpha2 = 0.0
    if args.method == "baseline":
        alpha1 = 0.0
    if model.logit_scale is not None and alpha1 == 0:
        model.logit_scale.requires_grad_(False)  # unused without L_semantic (and DDP insists)
    # channels_last (NHWC): faster convolutions (BENCHMARKS.md)
    model.to(device, memory_format=torch.channels_last)
    if args.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    print0(f"model: {args.method} / {args.backbone}: {n_train / 1e6:.2f}M trainable of "
           f"{n_all / 1e6:.2f}M parameters; alpha1 (semantic) {alpha1}, alpha2 (pixel) {alpha2}")

    # optimisation
    backbone_mult = args.backbone_lr_mult
    if backbone_mult is None:
        backbone_mult = 0.1 if args.backbone == "clip-vitb16" else 1.0
    optimizer = torch.optim.AdamW(param_groups(model, args, backbone_mult), lr=args.lr)
    sampler = (torch.utils.data.DistributedSampler(train_set, num_replicas=world, rank=rank,
                                                   shuffle=True, seed=args.seed, drop_last=True)
               if world > 1 else None)
    generator = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler,
        num_workers=args.workers, pin_memory=device.type == "cuda", drop_last=True,
        generator=generator, persistent_workers=False)
    if len(loader) == 0:
        raise ValueError(f"{len(train_set)} training instances over {world} process(es) do "
                         f"not fill one batch of --batch-size {args.batch_size}")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(len(loader), args))
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")

    start_epoch, best_ap = 0, -1.0
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        changed = sorted(k for k in set(model.cfg) | set(ckpt["model_config"])
                         if model.cfg.get(k) != ckpt["model_config"].get(k))
        if changed:
            raise ValueError(f"--resume {args.resume} was trained with a different model "
                             f"({', '.join(changed)} differ): repeat the run's own flags")
        model.load_state_dict(ckpt["model"], strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_ap = ckpt["epoch"] + 1, ckpt["best_ap"]
        print0(f"resumed {args.resume}: continuing at epoch {start_epoch}, best AP {best_ap:.4f}")

    train_model = model
    if world > 1:
        # PromptPose with neither L_pixel nor L_semantic leaves its text side unused
        text_unused = args.method == "promptpose" and not args.use_pixel and alpha1 == 0
        train_model = DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None,
            find_unused_parameters=text_unused)
    if args.compile:
        train_model = torch.compile(train_model)

    if rank == 0:
        with open(os.path.join(args.output_dir, "args.json"), "w") as f:
            json.dump({"args": vars(args), "git_commit": commit, "world_size": world,
                       "model_config": model.cfg}, f, indent=1)
    eval_args = argparse.Namespace(batch_size=args.eval_batch_size, workers=args.workers,
                                   flip_test=args.flip_test, amp=args.amp)
    for epoch in range(start_epoch, args.epochs):
        t0 = time.time()
        # the epoch number seeds everything random in it, so a resumed run repeats it exactly
        seed_everything(args.seed + 1000 * epoch + rank)
        generator.manual_seed(args.seed + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        losses = train_one_epoch(train_model, loader, optimizer, scheduler, scaler, args,
                                 (alpha1, alpha2), model.logit_scale, device, epoch)
        record = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"] /
                  optimizer.param_groups[0]["lr_mult"], **losses,
                  "train_time_s": round(time.time() - t0, 2)}
        last = epoch == args.epochs - 1
        if (epoch + 1) % args.eval_interval == 0 or last:
            _, stats, species, families = evaluate_dataset(model, val_set, eval_args, device,
                                                           rank, world, progress=rank == 0)
            if rank == 0:
                record.update({f"val_{k}": v for k, v in stats.items()})
                print0(format_report(stats, species, families))
        if rank == 0:
            ap = record.get("val_AP")
            is_best = ap is not None and ap > best_ap
            best_ap = max(best_ap, ap) if ap is not None else best_ap
            ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "epoch": epoch, "best_ap": best_ap, "args": vars(args),
                    "model_config": model.cfg, "keypoint_names": list(train_set.keypoint_names),
                    "flip_pairs": [list(p) for p in train_set.flip_pairs],
                    "skeleton": [list(s) for s in train_set.skeleton], "git_commit": commit}
            save_checkpoint(ckpt, os.path.join(args.output_dir, "last.pt"))
            if is_best:
                save_checkpoint(ckpt, os.path.join(args.output_dir, "best.pt"))
            with open(os.path.join(args.output_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            print0(" ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in record.items() if not k.startswith("val_")
                            or k == "val_AP"))
        if is_distributed():
            dist.barrier()
    if is_distributed():
        dist.destroy_process_group()
    return best_ap


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
