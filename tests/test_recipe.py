"""The README's Table 1 commands build the recipe its tables promise.

The five Table 1 commands are read from the README (with the shell variables it defines),
parsed by train.py's own argument parser, and turned into the full-size model, loss weights
and optimiser the run would use (random weights: the settings do not depend on them). Every
cell of the README's "Effective settings of the Table 1 rows" table is then compared with
what the code built, so neither the table nor the commands can drift from the code."""
import os
import re
import shlex

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import evaluate
import metrics
import recipe
import train
from keypoints import AP10K_KEYPOINTS, prompt_texts_for
from model import build_model

README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def shell_variables():
    """NAME="..." lines of the README's first bash block, expanded in order."""
    block = re.search(r"```bash\n(.*?)```", README[README.index("## Reproducing the paper"):],
                      re.S).group(1)
    env = {}
    for line in block.splitlines():
        m = re.match(r'(\w+)=("?)(.*?)\2(\s+#.*)?$', line.strip())
        if m:
            env[m.group(1)] = re.sub(r"\$(\w+)", lambda v: env[v.group(1)], m.group(3))
    return env


def table(title):
    """The markdown table after `title` -> list of rows (lists of cells)."""
    text = README[README.index(title):]
    lines = [line for line in text.splitlines() if line.startswith("|")]
    start = text.splitlines().index(lines[0])
    rows = []
    for line in text.splitlines()[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return [r for r in rows if not set("".join(r)) <= set("-: ")]


def table1_commands():
    env = shell_variables()
    rows = table("**Table 1**")[1:]
    assert len(rows) == 5, rows
    commands = []
    for row in rows:
        command = re.sub(r"\$(\w+)", lambda v: env[v.group(1)], row[3].strip("`"))
        commands.append(shlex.split(command))
    return commands


@pytest.fixture(scope="module")
def built():
    """Per Table 1 row: (args, model, alphas, optimiser, processes)."""
    out = []
    for argv in table1_commands():
        assert argv[0] == "torchrun" and argv[2] == "train.py", argv
        processes = int(argv[1].split("=")[1])
        args = train.resolve_args(train.get_args_parser(), argv[3:])
        cfg = train.model_config(args)
        torch.manual_seed(0)
        model = build_model(cfg, AP10K_KEYPOINTS, prompt_texts_for(AP10K_KEYPOINTS))
        optimizer = recipe.build_optimizer(model, args.lr, args.weight_decay,
                                          recipe.backbone_lr_mult(args))
        out.append((args, model, recipe.loss_weights(args, model.cfg), optimizer, processes))
    return out


def head_shape(head):
    if head is None:
        return "-"
    deconvs = [m for m in head.deconv_layers if isinstance(m, torch.nn.ConvTranspose2d)]
    return f"{len(deconvs)}x{deconvs[0].out_channels}"


def positional_table(model):
    for name, tensor in model.visual.state_dict().items():
        if name.endswith("positional_embedding"):
            h, w = (s // model.visual.stride for s in model.cfg["image_size"])
            assert tensor.shape[0] == h * w + 1, (name, tensor.shape)
            return f"{h}x{w}+1"
    return "-"


def number(x):
    return f"{x:g}"


def effective(setting, args, model, alphas, optimizer, processes):
    """The string the README table should show for one setting of one row."""
    promptpose = model.prompt_learner is not None
    cfg = model.cfg
    values = {
        "input_size": "x".join(map(str, cfg["image_size"])),
        "heatmap_size": "x".join(map(str, cfg["heatmap_size"])),
        "normalize": cfg["normalize"],
        "keypoint_head": head_shape(model.keypoint_head),
        "pixel_head": head_shape(model.pixel_head),
        "drop_path": number(cfg["drop_path"]),
        "n_ctx": str(model.prompt_learner.ctx.shape[0]) if promptpose else "-",
        "ctx_init_std": number(cfg["ctx_init_std"]) if promptpose else "-",
        "prompt_texts[4]": model.prompt_texts[4] if promptpose else "-",
        "positional_table": positional_table(model),
        "alpha1": number(alphas[0]),
        "alpha2": number(alphas[1]),
        "lr": number(args.lr),
        "backbone_lr": number(args.lr * recipe.backbone_lr_mult(args)),
        "weight_decay": number(args.weight_decay),
        "warmup": f"{args.warmup_iters} iters from {number(args.warmup_ratio)}",
        "lr_steps": ", ".join(map(str, args.lr_steps)),
        "epochs": str(args.epochs),
        "batch": f"{processes} x {args.batch_size}",
        "flip_test": "on" if args.flip_test and args.flip else "off",
        "oks_nms": number(metrics.OKS_NMS_THRESHOLD),
        "score_threshold": number(evaluate.VIS_THRESHOLD),
    }
    return values[setting]


def test_readme_effective_settings_match_the_code(built):
    rows = table("### Effective settings of the Table 1 rows")
    header, rows = rows[0], rows[1:]
    assert len(header) == 6 and len(rows) >= 20
    for row in rows:
        setting = row[0].strip("`")
        for column, (args, model, alphas, optimizer, processes) in zip(row[1:], built):
            assert column == effective(setting, args, model, alphas, optimizer, processes), \
                (setting, column, args.backbone, args.method)


def test_optimiser_groups_carry_the_backbone_lr(built):
    for args, model, _, optimizer, _ in built:
        lrs = {g["lr"] for g in optimizer.param_groups}
        mult = recipe.backbone_lr_mult(args)
        assert lrs == ({args.lr} if mult == 1 else {args.lr, args.lr * mult}), lrs
        text = [n for n, p in model.named_parameters() if n.startswith("prompt_learner.text")]
        assert all(not p.requires_grad for n, p in model.named_parameters() if n in text)


def test_weight_decay_spares_the_authors_sets():
    """The authors' effective sets: 'norm' in the name (the context decoder's norm1-3) is not
    decayed, nor with a ResNet-50 (its config's 'bias' key) any bias; BatchNorm weights,
    positional tables, context vectors, gamma and the temperature are, and with ViT-B biases."""
    from model import build_model, default_config

    def spared_and_names(backbone):
        model = build_model(default_config(backbone, "promptpose", small=True), AP10K_KEYPOINTS,
                            prompt_texts_for(AP10K_KEYPOINTS))
        names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
        return {names[id(p)] for g in recipe.param_groups(model, 1e-3, 1e-4, 1.0)
                if g["weight_decay"] == 0 for p in g["params"]}, set(names.values())

    spared, names = spared_and_names("clip-vitb16")
    assert spared and all(n.startswith("context_decoder.decoder.") and ".norm" in n for n in spared)
    assert len(spared) == 2 * 3 * 3   # weight and bias of norm1-3 in each of the 3 layers
    assert "visual.transformer.resblocks.0.ln_1.bias" in names - spared
    spared, names = spared_and_names("clip-rn50")
    assert spared == {n for n in names if "norm" in n or "bias" in n}
    assert {"visual.bn1.bias", "keypoint_head.final_layer.bias"} <= spared
    for decayed in ("visual.bn1.weight", "visual.attnpool.positional_embedding", "logit_scale",
                    "prompt_learner.ctx", "gamma", "context_decoder.memory_proj.0.weight"):
        assert decayed in names and decayed not in spared
