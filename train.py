"""Train PromptPose or SimpleBaseline (paper Sec. 4.1) with plain torch.distributed.

    torchrun --nproc_per_node=8 train.py --backbone clip-rn50 --method promptpose \
        --clip-weights RN50.pt --train-ann ap10k/annotations/ap10k-train-split1.json \
        --val-ann ap10k/annotations/ap10k-val-split1.json --images ap10k/data --output-dir out
    python train.py ...                          # same code, one process, no process group
    python train.py --resume out/last.pt         # continue a run: every flag comes from it
    python train.py ... --output-dir out --resume auto   # resume if out/last.pt exists

The run directory and the checkpoint's fields are described in checkpoint.py. `--batch-size`
is per process: the paper's total batch 128 is 8 GPUs x 16.
"""
import argparse
import collections
import json
import os
import random
import sys
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from checkpoint import (git_commit, init_from, load_checkpoint, make_checkpoint, model_only,
                        open_run, resolve_args, resume_state, save_checkpoint)
from dataset import KeypointDataset, default_workers, make_loader
from distributed import (HelpFormatter, all_reduce_sum, barrier, cleanup, init_distributed,
                         input_size, is_main, n_ctx, non_negative_int, number_in, number_list,
                         own_shard, positive, print0, run_cli)
from evaluate import evaluate_dataset
from files import append_line, read_lines, write_json, write_lines
from keypoints import sigma_list
from losses import total_loss
from metrics import format_report
from model import (AMP_DTYPES, BACKBONES, METHODS, autocast, build_model, default_config,
                   read_weights)
from recipe import (align_schedule, backbone_lr_mult, build_optimizer, check_schedule,
                    loss_weights, lr_factor)
from visualize import plot_training_curves


# ----------------------------------------------------------------------------- arguments
def get_args_parser():
    p = argparse.ArgumentParser("PromptPose training", allow_abbrev=False,
                                formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--train-ann", help="COCO-format keypoint json for training (required)")
    g.add_argument("--val-ann", help="COCO-format keypoint json for validation (required)")
    g.add_argument("--images", help="directory the json file_names are relative to (required)")
    g.add_argument("--val-images", help="image directory of --val-ann (default: --images)")
    g.add_argument("--few-shot", type=positive(int), metavar="K",
                   help="train on K images per species (Tables 2 and 4: 20); default: all")
    g.add_argument("--few-shot-seed", type=non_negative_int, default=0,
                   help="seed of the few-shot draw; the chosen image ids are saved in the run")
    g.add_argument("--sigmas", type=sigma_list,
                   help="comma-separated OKS sigmas, one per keypoint (default: the json's "
                        "'sigmas', else AP-10K's / COCO's, else 0.05 each with a warning)")
    g.add_argument("--flip-pairs", help="left/right pairs 'a,b;c,d' by name or 0-based index "
                                        "(default: the json's 'flip_pairs', else from the names)")
    g.add_argument("--no-flip", dest="flip", action="store_false",
                   help="no flip augmentation and no flip test (data without left/right)")
    g.add_argument("--reduced-jpeg-decode", action="store_true", help="decode a JPEG at 1/2-1/8 "
                   "size when its box is 2-8x the input: faster, slightly different crops "
                   "(default: full resolution, as the authors)")
    g.add_argument("--workers", type=non_negative_int, help="data loader processes per process "
                   "(default: the CPUs per process, at most 8)")
    g = p.add_argument_group("model")
    g.add_argument("--backbone", choices=BACKBONES, default="clip-rn50",
                   help="image encoder and its pre-training")
    g.add_argument("--method", choices=METHODS, default="promptpose",
                   help="promptpose (Sec. 3.2) or baseline (SimpleBaseline: backbone + head)")
    g.add_argument("--clip-weights", help="OpenAI CLIP checkpoint (RN50.pt / ViT-B-16.pt): the "
                                          "clip-* backbones and PromptPose's text encoder")
    g.add_argument("--imagenet-weights", help="torchvision resnet50 state dict for imagenet-rn50")
    g.add_argument("--random-init", action="store_true",
                   help="no pre-trained weights at all: demo and tests only")
    g.add_argument("--small", action="store_true", help="a small model of the same structure "
                   "(CPU demo / tests; needs --random-init)")
    g.add_argument("--input-size", type=input_size, default=[256, 256], help="crop HEIGHT[xWIDTH] "
                   "(AP-10K 256, COCO pre-training 256x192); heatmaps are 1/4 of it")
    g.add_argument("--normalize", choices=["imagenet", "clip"],
                   help="input mean/std (default: imagenet for every backbone, as the authors)")
    g.add_argument("--drop-path", type=number_in(float, 0, 0.99),
                   help="ViT-B stochastic depth at the last block (default 0.4 ViT-B, 0 ResNet)")
    g.add_argument("--n-ctx", type=n_ctx,
                   help="learnable context vectors [T]_1..[T]_k of Eq. 2 (default 8)")
    g.add_argument("--ctx-init-std", type=positive(float),
                   help="std of the context vectors' truncated-normal init (default 1.0)")
    g.add_argument("--no-pixel", dest="use_pixel", action="store_false",
                   help="ablation: no pixel-level score map / L_pixel (Table 5)")
    g.add_argument("--no-prompt-encoder", dest="use_prompt_encoder", action="store_false",
                   help="ablation: no prompt encoder (Table 5)")
    g.add_argument("--no-cross-attn", dest="use_cross_attn", action="store_false",
                   help="ablation: no cross-attention of the prompts to the image")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes")
    g.add_argument("--init-from", help="checkpoint of an earlier run (e.g. COCO pre-training, "
                                       "Tables 3-4) whose matching tensors initialise this model")
    g.add_argument("--init-from-partial", action="store_true",
                   help="allow --init-from across backbones / tower types (matching tensors only)")
    g = p.add_argument_group("loss (Eq. 10)")
    g.add_argument("--alpha1", type=number_in(float, 0),
                   help="weight of L_semantic (default 0.0005)")
    g.add_argument("--alpha2", type=number_in(float, 0),
                   help="weight of L_pixel (default 0.4 ResNet-50, 2.0 ViT-B)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive(int), default=210, help="total epochs")
    g.add_argument("--batch-size", type=positive(int), default=16, help="batch size per process")
    g.add_argument("--lr", type=positive(float), default=5e-4, help="AdamW learning rate")
    g.add_argument("--backbone-lr-mult", type=number_in(float, 0),
                   help="lr multiplier of the image encoder (default 0.1 ViT-B, else 1)")
    g.add_argument("--weight-decay", type=number_in(float, 0), default=1e-4,
                   help="AdamW weight decay (not on the context decoder's norms, nor on biases "
                        "with a ResNet-50, as the authors)")
    g.add_argument("--warmup-iters", type=non_negative_int, default=500,
                   help="linear warm-up iterations, from --warmup-ratio x lr")
    g.add_argument("--warmup-ratio", type=number_in(float, 0, 1, above=True), default=0.001,
                   help="lr factor at iteration 0")
    g.add_argument("--lr-steps", type=number_list(int), default=[170, 200],
                   help="epochs at which the lr is multiplied by 0.1")
    g.add_argument("--clip-grad", type=number_in(float, 0), default=0.0,
                   help="max grad norm (0 = off)")
    g.add_argument("--amp", choices=list(AMP_DTYPES), default="none",
                   help="mixed precision on GPU (fp16 uses a GradScaler)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", default="output", help="the run directory (checkpoint.py)")
    g.add_argument("--resume", help="RUN/last.pt: continue that run at its next epoch, every "
                                    "flag from it; 'auto': RUN/last.pt of --output-dir if any")
    g.add_argument("--seed", type=non_negative_int, default=0, help="seed of everything random")
    g.add_argument("--eval-interval", type=positive(int), default=10,
                   help="validate every N epochs (and after the last epoch)")
    g.add_argument("--eval-batch-size", type=positive(int), default=32,
                   help="batch size of validation")
    g.add_argument("--no-flip-test", dest="flip_test", action="store_false",
                   help="validate without the flip test")
    g.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    return p


# ----------------------------------------------------------------------------- data and model
def model_config(args):
    """default_config of the backbone / method with the flags that override a default."""
    overrides = {k: getattr(args, k) for k in ("normalize", "drop_path", "n_ctx", "ctx_init_std")
                 if getattr(args, k) is not None}
    if args.method == "promptpose":
        overrides.update(use_pixel=args.use_pixel, use_prompt_encoder=args.use_prompt_encoder,
                         use_cross_attn=args.use_cross_attn)
    return default_config(args.backbone, args.method, small=args.small,
                          image_size=args.input_size, **overrides)


def build_data(args, cfg):
    """Training and validation sets at the model's (H, W) sizes and normalisation."""
    common = dict(inputs=cfg, sigmas=args.sigmas, flip=args.flip, flip_pairs=args.flip_pairs,
                  reduced_decode=args.reduced_jpeg_decode)
    few_shot = (args.few_shot, args.few_shot_seed) if args.few_shot is not None else None
    train_set = KeypointDataset(args.train_ann, args.images, train=True, few_shot=few_shot,
                                **common)
    val_set = KeypointDataset(args.val_ann, args.val_images or args.images, train=False, **common)
    if list(train_set.keypoint_names) != list(val_set.keypoint_names):
        raise ValueError(f"--train-ann and --val-ann define different keypoints: "
                         f"{train_set.keypoint_names} vs {val_set.keypoint_names}")
    pairs = [f"{train_set.keypoint_names[a]}<->{train_set.keypoint_names[b]}"
             for a, b in train_set.flip_pairs]
    print0(f"train data: {train_set.skip_summary}\nval data: {val_set.skip_summary}\n"
           f"flip pairs: {', '.join(pairs) if args.flip else 'none (--no-flip)'}")
    return train_set, val_set


def build_train_model(args, cfg, weights, train_set, device, world):
    """The model (pre-trained weights, --init-from; None for a resumed run, whose last.pt holds
    every weight) on the device, and Eq. 10's alphas."""
    clip_sd, imagenet_sd = weights or (None, None)
    model = build_model(cfg, train_set.keypoint_names, train_set.prompt_texts,
                        clip_state_dict=clip_sd, imagenet_state_dict=imagenet_sd)
    if args.init_from and weights is not None:
        init_from(model, args.init_from, partial=args.init_from_partial)
    alpha1, alpha2 = loss_weights(args, model.cfg)
    if model.logit_scale is not None and alpha1 == 0:
        model.logit_scale.requires_grad_(False)  # unused without L_semantic (and DDP insists)
    if model.pixel_head is not None and alpha2 == 0:
        model.pixel_head.requires_grad_(False)  # its heatmaps feed L_pixel alone
    model.to(device, memory_format=torch.channels_last)  # NHWC: faster convolutions
    if args.sync_bn and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print0(f"model: {args.method} / {args.backbone}: {n_train / 1e6:.2f}M trainable of "
           f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; alpha1 "
           f"(semantic) {alpha1}, alpha2 (pixel) {alpha2}")
    return model, (alpha1, alpha2)


# ----------------------------------------------------------------------------- optimisation
def build_schedule(args, model, train_set, device, rank, world):
    """Optimiser, lr schedule, GradScaler, sampler and loader of Sec. 4.1."""
    optimizer = build_optimizer(model, args.lr, args.weight_decay, backbone_lr_mult(args))
    sampler = None if world == 1 else torch.utils.data.DistributedSampler(
        train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    generator = torch.Generator().manual_seed(args.seed)
    loader = make_loader(train_set, args.batch_size, args.workers, shuffle=sampler is None,
                         sampler=sampler, generator=generator, drop_last=True,
                         pin_memory=device.type == "cuda")
    if len(loader) == 0:
        raise ValueError(f"{len(train_set)} training instances over {world} process(es) do not "
                         f"fill one batch of --batch-size {args.batch_size}")
    check_schedule(args.epochs, len(loader), args.warmup_iters, args.lr_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(
        len(loader), args.warmup_iters, args.warmup_ratio, args.lr_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    return optimizer, scheduler, scaler, loader, sampler, generator


def wrap_model(model, args, alphas, device, local_rank, world):
    """DDP (several processes) and torch.compile around the model, for the training steps."""
    if world > 1:
        # PromptPose with neither L_pixel nor L_semantic leaves its text side unused
        unused = args.method == "promptpose" and not args.use_pixel and alphas[0] == 0
        model = DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None,
            find_unused_parameters=unused)
    return torch.compile(model) if args.compile else model


# ----------------------------------------------------------------------------- training
def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_step(model, batch, optimizer, scheduler, scaler, amp, clip_grad, alphas, logit_scale):
    """One optimisation step on a batch already on the device -> (loss, terms) (Eq. 10)."""
    with autocast(batch["image"].device.type, amp):
        outputs = model(batch["image"])
    loss, terms = total_loss({k: v.float() for k, v in outputs.items()}, batch, logit_scale,
                             *alphas)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss, terms


def check_finite(loss, terms, batch, epoch, lr):
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"epoch {epoch}: the loss is {loss.item()} (pred {terms['pred'].item():.4g}, pixel "
            f"{terms['pixel'].item():.4g}, semantic {terms['semantic'].item():.4g}) on the batch "
            f"of image ids {batch['image_id'].tolist()[:8]}: if the first batches are already "
            f"non-finite, check those images' annotations; if it diverged after a while, lower "
            f"--lr (now {lr:g}) or use --amp bf16 instead of fp16")


# What the epoch loop works with; `main` builds it step by step. `model` is checkpointed and
# validated, `train_model` (its DDP / torch.compile wrapper) takes the training steps; `sampler`
# is None for one process; `alphas` are Eq. 10's (alpha1, alpha2).
Run = collections.namedtuple("Run", ["args", "model", "train_model", "optimizer", "scheduler",
                                     "scaler", "loader", "sampler", "generator", "alphas",
                                     "val_set", "device", "rank", "world", "commit"])


def train_one_epoch(run, epoch):
    """One pass over the loader -> each loss term's mean over the epoch's samples (reduced across
    processes as sums and counts); NaN / inf is checked every 50 steps and at the end (a sync)."""
    args, loader = run.args, run.loader
    run.train_model.train()
    sums = torch.zeros(4, dtype=torch.float64, device=run.device)  # total, pred, pixel, semantic
    count = torch.zeros(1, dtype=torch.float64, device=run.device)
    batches = loader
    if is_main() and sys.stderr.isatty():  # a progress bar on a terminal, clean lines in a log
        batches = tqdm(loader, desc=f"epoch {epoch}", leave=False, mininterval=5)
    for i, batch in enumerate(batches):
        batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()
                 if torch.is_tensor(v)}
        loss, terms = train_step(run.train_model, batch, run.optimizer, run.scheduler, run.scaler,
                                 args.amp, args.clip_grad, run.alphas, run.model.logit_scale)
        if i % 50 == 0 or i == len(loader) - 1:
            check_finite(loss, terms, batch, epoch, args.lr)
        n = batch["image"].shape[0]
        values = [loss.detach(), terms["pred"], terms["pixel"], terms["semantic"]]
        sums += n * torch.stack([v.double() for v in values])
        count += n
    mean = (all_reduce_sum(sums) / all_reduce_sum(count).clamp(min=1)).tolist()
    return dict(zip(["loss", "pred", "pixel", "semantic"], mean))


def validate(run):
    """Val metrics for the log ('val_AP', ..., 'val_PCK', 'val_RMSE_px'); rank 0 prints."""
    args = run.args
    _, report = evaluate_dataset(run.model, run.val_set, batch_size=args.eval_batch_size,
                                 workers=args.workers, flip=args.flip_test and args.flip,
                                 amp=args.amp, device=run.device, rank=run.rank, world=run.world,
                                 progress=is_main() and sys.stderr.isatty())
    if report is None:
        return {}
    print0(format_report(report, detail=False))
    return {**{f"val_{k}": v for k, v in report["stats"].items()},
            "val_PCK": report["pck"], "val_RMSE_px": report["rmse_px"]}


def save_epoch(run, epoch, best_ap, is_best, last, record):
    """Model-only best.pt on a new best and final.pt after the last epoch, the log line, then
    last.pt, the resume point: a run stopped in between repeats the epoch and rewrites them.
    Data fields are the val set's (what val AP used); --no-flip stores no pairs: no flip test."""
    args, val_set = run.args, run.val_set
    data_info = {"flip_pairs": val_set.flip_pairs if args.flip else [],
                 "skeleton": val_set.skeleton, "sigmas": val_set.sigmas,
                 "selected_by": selected_by(val_set)}
    ckpt = make_checkpoint(run.model, data_info, vars(args), epoch, best_ap, run.commit,
                           run.optimizer, run.scheduler, run.scaler)
    if is_best:
        save_checkpoint(os.path.join(args.output_dir, "best.pt"), model_only(ckpt))
    if last:
        save_checkpoint(os.path.join(args.output_dir, "final.pt"), model_only(ckpt))
    log_epoch(args.output_dir, record)
    save_checkpoint(os.path.join(args.output_dir, "last.pt"), ckpt)


def log_epoch(output_dir, record):
    """Append the epoch's record to log.jsonl, redraw curves.png after a validation, print."""
    path = os.path.join(output_dir, "log.jsonl")
    append_line(path, record)
    if "val_AP" in record:
        plot_training_curves(read_lines(path), os.path.join(output_dir, "curves.png"))
    print0(" ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}" for k, v in
                    record.items() if not k.startswith("val_") or k in ("val_AP", "val_RMSE_px")))


def trim_log(output_dir, start_epoch):
    """Drop log records of the epochs a resumed run repeats (stopped before their last.pt)."""
    path = os.path.join(output_dir, "log.jsonl")
    records = read_lines(path)
    kept = [r for r in records if r.get("epoch", -1) < start_epoch]
    if len(kept) < len(records):
        write_lines(path, kept)
        print0(f"{path}: dropped the records of epoch(s) >= {start_epoch}, which run again")


def selected_by(val_set):
    """best.pt's criterion: val AP, or val RMSE (px) where the AP rests on a placeholder sigma."""
    return "val_AP" if val_set.sigmas_given else "val_RMSE_px"


def fit(run, start_epoch, best_ap):
    """The epoch loop: train, validate every --eval-interval epochs, checkpoint, log."""
    args = run.args
    final = os.path.join(args.output_dir, "final.pt")
    if start_epoch >= args.epochs:  # a finished run started again (a preemptible job)
        print0(f"all {args.epochs} epochs are trained already: nothing to do")
        if is_main() and not os.path.exists(final):
            save_checkpoint(final, model_only(load_checkpoint(args.resume)))
    for epoch in range(start_epoch, args.epochs):
        t0 = time.time()
        # the epoch number seeds everything random in it, so a resumed run repeats it exactly
        seed_everything(args.seed + 1000 * epoch + run.rank)
        run.generator.manual_seed(args.seed + epoch)
        if run.sampler is not None:
            run.sampler.set_epoch(epoch)
        lr = args.lr * run.scheduler.lr_lambdas[0](run.scheduler.last_epoch)  # at its first step
        with own_shard():
            losses = train_one_epoch(run, epoch)
        record = {"epoch": epoch, **losses, "lr": lr, "train_time_s": round(time.time() - t0, 2)}
        last = epoch == args.epochs - 1
        if (epoch + 1) % args.eval_interval == 0 or last:
            record.update(validate(run))
        if is_main():
            value = record.get(selected_by(run.val_set))
            is_best = value is not None and (best_ap == -1 or (
                value > best_ap if selected_by(run.val_set) == "val_AP" else value < best_ap))
            best_ap = value if is_best else best_ap
            save_epoch(run, epoch, best_ap, is_best, last, record)
        barrier()
    return best_ap


def main(args):
    """Sec. 4.1 in order: run dir, weights, data, model, optimiser and schedule, resume, epochs."""
    rank, local_rank, world, device = init_distributed(args.device)
    if args.workers is None:
        args.workers = default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    lock = open_run(args)  # noqa: F841 (held for the life of the run)
    seed_everything(args.seed + rank)  # the model's initialisation
    resumed = (load_checkpoint(args.resume, need_training_state=True)
               if args.resume not in (None, "auto") else None)
    cfg = resumed["model_config"] if resumed else model_config(args)
    weights = None if resumed else read_weights(  # before any annotation file is read
        args.backbone, args.method, args.clip_weights, args.imagenet_weights, args.random_init,
        args.small)
    train_set, val_set = build_data(args, cfg)
    model, alphas = build_train_model(args, cfg, weights, train_set, device, world)
    optimizer, scheduler, scaler, loader, sampler, generator = build_schedule(
        args, model, train_set, device, rank, world)
    start_epoch, best_ap = 0, -1.0
    if resumed:
        start_epoch, best_ap = resume_state(resumed, args.resume, model, optimizer, scheduler,
                                            scaler)
        del resumed
        align_schedule(scheduler, start_epoch * len(loader), world)
        if is_main():
            trim_log(args.output_dir, start_epoch)
    commit = git_commit()
    print0(f"git commit {commit}; {world} process(es) on {device}\n"
           f"{json.dumps(vars(args), indent=1)}")
    if is_main():
        write_json(os.path.join(args.output_dir, "args.json"), {
            "args": vars(args), "git_commit": commit, "world_size": world,
            "model_config": model.cfg}, indent=1)
        if train_set.few_shot_image_ids is not None:
            write_json(os.path.join(args.output_dir, "few_shot_image_ids.json"),
                       train_set.few_shot_image_ids)
    train_model = wrap_model(model, args, alphas, device, local_rank, world)
    run = Run(args, model, train_model, optimizer, scheduler, scaler, loader, sampler, generator,
              alphas, val_set, device, rank, world, commit)
    best_ap = fit(run, start_epoch, best_ap)
    print0(f"done: {os.path.join(args.output_dir, 'final.pt')} is the last epoch (what the "
           f"paper reports); {os.path.join(args.output_dir, 'best.pt')} has the best "
           f"{selected_by(val_set)} {best_ap:.4g} (selected on val)")
    cleanup()
    return best_ap


if __name__ == "__main__":
    parser = get_args_parser()
    run_cli(main, lambda: resolve_args(parser, sys.argv[1:]),
            on_interrupt="interrupted: the run directory keeps the last finished epoch "
                         "(last.pt, never half-written); continue with --resume RUN/last.pt")
