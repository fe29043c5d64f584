"""The authors' recipe (paper Sec. 4.1, their released code where the paper is silent), each
default written here once: the loss weights of Eq. 10, the image encoder's lr factor, the
AdamW parameter groups and the lr schedule. train.py's flags override them; the README's
recipe table says where each value comes from.
"""
import torch

from distributed import print0


def default_loss_weights(backbone, method, use_pixel):
    """The (alpha1, alpha2) of Eq. 10: the authors' semantic weight 0.0005 and pixel weight 0.4
    for ResNet-50, 2.0 for ViT-B; 0 for a term the model does not have (both for the
    SimpleBaseline, alpha2 with the pixel branch off). Returns {'alpha1', 'alpha2'}."""
    if method == "baseline":
        return {"alpha1": 0.0, "alpha2": 0.0}
    return {"alpha1": 0.0005, "alpha2": (2.0 if "vit" in backbone else 0.4) if use_pixel else 0.0}


def loss_weights(args, cfg):
    """(alpha1, alpha2) of Eq. 10: the defaults, or --alpha1 / --alpha2 where the term exists."""
    alphas = default_loss_weights(cfg["backbone"], cfg["method"], cfg.get("use_pixel", False))
    alpha1 = alphas["alpha1"] if args.alpha1 is None or cfg["method"] == "baseline" else args.alpha1
    alpha2 = alphas["alpha2"] if args.alpha2 is None or alphas["alpha2"] == 0 else args.alpha2
    return alpha1, alpha2


def backbone_lr_mult(args):
    """--backbone-lr-mult, else 0.1 for ViT-B (the paper's 5e-5 for it at lr 5e-4), else 1."""
    if args.backbone_lr_mult is not None:
        return args.backbone_lr_mult
    return 0.1 if args.backbone == "clip-vitb16" else 1.0


def param_groups(model, lr, weight_decay, backbone_mult):
    """AdamW groups as the authors' optimiser makes them (mmcv's paramwise_cfg takes the first
    key that is a substring of a name): no weight decay on tensors whose name holds 'norm' (the
    context decoder's norm1-3) and, with a ResNet-50 (whose config also has the key 'bias'),
    'bias'; decay on every other (ViT-B: the whole image encoder, its 'backbone' key coming
    first); the image encoder (`visual.*`) at lr x backbone_mult; the text encoder is frozen."""
    resnet = model.cfg["vision"]["type"] != "clip-vit"
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = "norm" in name or (resnet and "bias" in name)
        mult = backbone_mult if name.startswith("visual.") else 1.0
        group = groups.setdefault((no_decay, mult), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr": lr * mult,
            "lr_mult": mult})
        group["params"].append(param)
    return list(groups.values())


def build_optimizer(model, lr, weight_decay, backbone_mult):
    return torch.optim.AdamW(param_groups(model, lr, weight_decay, backbone_mult), lr=lr)


def lr_factor(iters_per_epoch, warmup_iters, warmup_ratio, lr_steps):
    """Iteration -> lr factor: linear warm-up from warmup_ratio over warmup_iters, then x0.1
    at each epoch in lr_steps (paper Sec. 4.1: 170 and 200 of 210)."""
    def factor(it):
        step = 0.1 ** sum(it // iters_per_epoch >= s for s in lr_steps)
        if it < warmup_iters:
            return step * (warmup_ratio + (1 - warmup_ratio) * it / warmup_iters)
        return step
    return factor


def check_schedule(epochs, iters_per_epoch, warmup_iters, lr_steps):
    """A warning line when the schedule (AP-10K's by default) does not fit the data: a warm-up
    over more than a tenth of the run, or an lr step outside it."""
    total = epochs * iters_per_epoch
    problems = []
    if warmup_iters > 0.1 * total:
        problems.append(f"the warm-up of {warmup_iters} iterations is {warmup_iters / total:.0%} "
                        f"of the run's {total} ({iters_per_epoch} an epoch): set --warmup-iters")
    outside = [s for s in lr_steps if not 0 < s < epochs]
    if outside:
        problems.append(f"lr step(s) at epoch {outside} fall outside the run's {epochs} epochs: "
                        f"set --lr-steps")
    if problems:
        print0("warning: " + "; ".join(problems) + " (the README gives a small-data recipe)")


def align_schedule(scheduler, iteration, world):
    """Put a resumed run's lr schedule at `iteration` = next epoch x iterations per epoch: with
    another number of processes the run has another number of iterations per epoch, and the
    schedule's steps are in epochs."""
    if scheduler.last_epoch != iteration:
        print0(f"--resume: {world} process(es) make {iteration} iterations up to this epoch, the "
               f"run had made {scheduler.last_epoch}: the lr schedule continues at {iteration}")
        scheduler.last_epoch = iteration
        for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * scheduler.lr_lambdas[0](iteration)
