"""The image towers of PromptPose and SimpleBaseline, hand-written with upstream key names.

Each tower maps images (B, 3, H, W) to `(feature_map, global_embedding, dense_embedding)`:
CLIP's `ModifiedResNet` and `VisionTransformer` (their projector is the paper's dense projector,
Sec. 3.2.2) and torchvision's `ResNet50` (no projector: the last two are None). Real weights load
with strict=True. A CLIP positional table (7x7+1 / 14x14+1 at 224) is resized once, bilinearly,
when weights are loaded, to the model's feature grid (8x8 / 16x16 at 256x256); forward never does.
"""
import math
import os
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip_text import LayerNorm, Transformer
from files import torch_load

FULL_VISION = {  # the feature grid is added by default_config from the image size
    "clip-rn50": dict(type="clip-resnet", layers=[3, 4, 6, 3], output_dim=1024, heads=32, width=64),
    "clip-vitb16": dict(type="clip-vit", patch_size=16, width=768, layers=12, heads=12,
                        output_dim=512),
    "imagenet-rn50": dict(type="resnet", layers=[3, 4, 6, 3], width=64),
}
SMALL_VISION = {  # same structure, tiny (for CPU tests and the demo; never from a checkpoint)
    "clip-rn50": dict(type="clip-resnet", layers=[1, 1, 1, 1], output_dim=64, heads=2, width=16),
    "clip-vitb16": dict(type="clip-vit", patch_size=16, width=64, layers=2, heads=2, output_dim=64),
    "imagenet-rn50": dict(type="resnet", layers=[1, 1, 1, 1], width=16),
}


def resize_positional_table(pos, old_grid, new_grid):
    """(1 + h*w, C) table of grid old_grid (h, w) -> (1 + h'*w', C) for new_grid (h', w'): the
    class / mean row kept, the rest resized bilinearly (align_corners=False, as the authors)."""
    (h, w), (nh, nw) = tuple(old_grid), tuple(new_grid)
    if pos.shape[0] != 1 + h * w:
        raise ValueError(f"positional table has {pos.shape[0]} rows, not 1 + {h}x{w}")
    if (h, w) == (nh, nw):
        return pos
    spatial = pos[1:].reshape(1, h, w, -1).permute(0, 3, 1, 2)  # (1, C, h, w)
    spatial = F.interpolate(spatial.float(), size=(nh, nw), mode="bilinear", align_corners=False)
    spatial = spatial.permute(0, 2, 3, 1).reshape(nh * nw, -1).to(pos.dtype)  # (h'w', C)
    return torch.cat([pos[:1], spatial], dim=0)


def check_grid(grid, table_grid):
    """The feature grid (h, w) of an input must be the one the positional table was learned at."""
    if tuple(grid) != tuple(table_grid):
        raise ValueError(f"input gives a {grid[0]}x{grid[1]} feature grid but the positional table "
                         f"is {table_grid[0]}x{table_grid[1]}: feed images of cfg['image_size']")


def tokens_to_map(tokens, h, w):
    """(B, h*w, C) -> (B, C, h, w) (a channels_last view, no copy)."""
    return tokens.reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2)


def map_to_tokens(x):
    """(B, C, h, w) -> (B, h*w, C) (a view when x is channels_last)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[2] * x.shape[3], x.shape[1])


class Bottleneck(nn.Module):
    """ResNet bottleneck (expansion 4). `antialias=True` is CLIP's variant: every conv has
    stride 1 and an avgpool does the striding (before conv3 and in the shortcut);
    `antialias=False` is torchvision's (stride on conv2 and on the shortcut conv)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, antialias=False):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1 if antialias else stride, padding=1,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if antialias and stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:  # OpenAI names CLIP's pool "-1": conv/bn keep keys 0, 1
            pool = [("-1", nn.AvgPool2d(stride))] if antialias else []
            conv = nn.Conv2d(inplanes, out, 1, stride=1 if antialias else stride, bias=False)
            self.downsample = nn.Sequential(OrderedDict(pool + [("0", conv),
                                                                ("1", nn.BatchNorm2d(out))]))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.avgpool(self.relu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        out += identity  # in place, as torchvision: one block-sized allocation less (BENCHMARKS.md)
        return self.relu(out)


def make_res_layers(module, width, layers, antialias):
    """Adds layer1..layer4 (widths w, 2w, 4w, 8w; strides 1, 2, 2, 2) to `module`."""
    inplanes = width
    for i, blocks in enumerate(layers):
        planes, stride = width * 2 ** i, 1 if i == 0 else 2
        seq = [Bottleneck(inplanes, planes, stride, antialias)]
        inplanes = planes * Bottleneck.expansion
        seq += [Bottleneck(inplanes, planes, 1, antialias) for _ in range(1, blocks)]
        setattr(module, f"layer{i + 1}", nn.Sequential(*seq))


class AttentionPool2d(nn.Module):
    """CLIP's attention pool as the paper's dense projector (Sec. 3.2.2): tokens = [mean of the
    grid, every grid cell] + positional embedding (1 + h*w rows), every token a query (CLIP
    queries only the mean); output 0 is CLIP's image embedding, the others the dense one."""

    def __init__(self, grid, embed_dim, num_heads, output_dim):
        super().__init__()
        self.grid = tuple(grid)
        self.positional_embedding = nn.Parameter(
            torch.randn(grid[0] * grid[1] + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.c_proj):  # CLIP: N(0, C^-1/2)
            nn.init.normal_(lin.weight, std=embed_dim ** -0.5)

    def forward(self, x):
        """x (B, C, h, w) -> global (B, out), dense (B, out, h, w)."""
        B, C, h, w = x.shape
        check_grid((h, w), self.grid)
        tokens = map_to_tokens(x)  # (B, hw, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # (B, 1+hw, C)
        tokens = tokens + self.positional_embedding.to(x.dtype)
        L, nh = tokens.shape[1], self.num_heads
        q, k, v = (proj(tokens).reshape(B, L, nh, C // nh).transpose(1, 2)  # (B, nh, L, C/nh)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, L, C/nh)
        out = self.c_proj(out.transpose(1, 2).reshape(B, L, C))  # (B, 1+hw, out)
        return out[:, 0], tokens_to_map(out[:, 1:], h, w)


class ModifiedResNet(nn.Module):
    """CLIP's ResNet image tower (3-conv stem, anti-aliased strides, attention pool): images
    (B, 3, H, W) -> feature_map (B, 32*width, H/32, W/32), global (B, output_dim) == CLIP
    encode_image, dense (B, output_dim, H/32, W/32); projector=False (SimpleBaseline): no
    attnpool, the last two None. grid: the (H/32, W/32) grid of the positional table."""

    stride = 32

    def __init__(self, layers=(3, 4, 6, 3), output_dim=1024, heads=32, grid=(7, 7), width=64,
                 projector=True):
        super().__init__()
        self.grid = tuple(grid)
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        make_res_layers(self, width, layers, antialias=True)
        self.out_channels = width * 32
        self.attnpool = AttentionPool2d(grid, width * 32, heads, output_dim) if projector else None
        for name, p in self.named_parameters():  # CLIP's init: the last BN of each block is zero
            if name.startswith("layer") and name.endswith("bn3.weight"):
                nn.init.zeros_(p)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 32w, H/32, W/32)
        if self.attnpool is None:
            return x, None, None
        return (x, *self.attnpool(x))  # + global (B, output_dim), dense (B, output_dim, h, w)


class VisionTransformer(nn.Module):
    """CLIP's ViT image tower (patch conv, class token, ln_pre, transformer, ln_post, proj):
    images -> feature_map (B, width, H/p, W/p) (patch tokens before ln_post), global (B,
    output_dim) == CLIP encode_image, dense (B, output_dim, H/p, W/p) (ln_post and proj on every
    patch token); projector=False: no ln_post/proj. drop_path: the last block's stochastic depth."""

    def __init__(self, grid=(14, 14), patch_size=16, width=768, layers=12, heads=12,
                 output_dim=512, projector=True, drop_path=0.0):
        super().__init__()
        self.grid, self.stride, self.out_channels = tuple(grid), patch_size, width
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid[0] * grid[1] + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, drop_path)
        self.ln_post = LayerNorm(width) if projector else None
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim)) if projector else None

    def forward(self, x):
        x = self.conv1(x)  # (B, width, h, w)
        B, C, h, w = x.shape
        check_grid((h, w), self.grid)
        x = torch.cat([self.class_embedding.to(x.dtype).expand(B, 1, C), map_to_tokens(x)],
                      dim=1)  # (B, 1+hw, width)
        x = x + self.positional_embedding.to(x.dtype)  # CLIP adds the class embedding once
        x = self.transformer(self.ln_pre(x))  # (B, 1+hw, width)
        feature_map = tokens_to_map(x[:, 1:], h, w)  # (B, width, h, w)
        if self.proj is None:
            return feature_map, None, None
        x = self.ln_post(x) @ self.proj  # (B, 1+hw, output_dim)
        return feature_map, x[:, 0], tokens_to_map(x[:, 1:], h, w)


class ResNet50(nn.Module):
    """torchvision's ResNet (v1.5 bottlenecks, its key names, no `fc`); forward(images) ->
    (layer4 output (B, 32*width, H/32, W/32), None, None)."""

    stride = 32

    def __init__(self, layers=(3, 4, 6, 3), width=64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        make_res_layers(self, width, layers, antialias=False)
        self.out_channels = width * 32
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x, None, None


def _count_blocks(sd, prefix):
    """Number of distinct i in keys '{prefix}{i}.*'."""
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def guess_grid(pos):
    """The grid (h, w) of a (1 + h*w, C) positional table: square (OpenAI's), else the most nearly
    square h x w with h >= w (8x6, 16x12: the portrait 256x192 inputs of top-down pose)."""
    n = pos.shape[0] - 1
    w = math.isqrt(n)
    while n % w:
        w -= 1
    return n // w, w


def feature_grid(image_size, stride):
    """(H / stride, W / stride) for image_size (H, W) or an int; both must be multiples."""
    H, W = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if H % stride or W % stride:
        raise ValueError(f"image size {H}x{W} is not a multiple of the backbone stride {stride}")
    return H // stride, W // stride


def clip_visual_config(sd, image_size=None):
    """{'type': 'clip-vit' | 'clip-resnet', **tower kwargs} from the shapes of a CLIP state
    dict's `visual.*` (heads = width // 64, as OpenAI). 'grid': the feature grid of image_size
    (H, W), or the checkpoint's own (7x7 / 14x14 for OpenAI's 224 models) when it is None."""
    if "visual.proj" in sd:
        conv = sd["visual.conv1.weight"]  # (width, 3, patch, patch)
        pos = sd["visual.positional_embedding"]
        cfg = {"type": "clip-vit", "patch_size": conv.shape[-1], "width": conv.shape[0],
               "layers": _count_blocks(sd, "visual.transformer.resblocks."),
               "heads": conv.shape[0] // 64, "output_dim": sd["visual.proj"].shape[1]}
    elif "visual.attnpool.positional_embedding" in sd:
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        pos = sd["visual.attnpool.positional_embedding"]
        cfg = {"type": "clip-resnet",
               "layers": [_count_blocks(sd, f"visual.layer{i}.") for i in range(1, 5)],
               "output_dim": sd["visual.attnpool.c_proj.weight"].shape[0],
               "heads": width * 32 // 64, "width": width}
    else:
        raise ValueError("not a CLIP state dict: it has neither 'visual.proj' (ViT) nor "
                         "'visual.attnpool.positional_embedding' (ModifiedResNet)")
    stride = cfg.get("patch_size", ModifiedResNet.stride)
    cfg["grid"] = list(guess_grid(pos) if image_size is None else feature_grid(image_size, stride))
    return cfg


def build_visual(vision_cfg, projector=True, drop_path=0.0):
    """A randomly initialised tower from cfg['vision'] ({'type': ..., **kwargs}); drop_path
    (stochastic depth) exists for the ViT only."""
    kwargs = {k: v for k, v in vision_cfg.items() if k != "type"}
    if vision_cfg["type"] == "clip-vit":
        return VisionTransformer(**kwargs, projector=projector, drop_path=drop_path)
    if drop_path:
        raise ValueError(f"drop_path {drop_path} is for the ViT backbone only: use 0")
    if vision_cfg["type"] == "clip-resnet":
        return ModifiedResNet(**kwargs, projector=projector)
    if vision_cfg["type"] == "resnet":
        return ResNet50(**kwargs)
    raise ValueError(f"unknown tower type {vision_cfg['type']!r}")


def load_clip_visual(tower, sd):
    """Load a CLIP state dict's `visual.*` into `tower` strictly, the positional table resized to
    the tower's grid; a tower without projector (SimpleBaseline) drops the projector's keys."""
    own = tower.state_dict()
    visual = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    projector_keys = ("attnpool.", "ln_post.", "proj")
    if not any(k.startswith(projector_keys) for k in own):
        visual = {k: v for k, v in visual.items() if not k.startswith(projector_keys)}
    for key in ("attnpool.positional_embedding", "positional_embedding"):
        if key in visual and key in own:
            visual[key] = resize_positional_table(visual[key], guess_grid(visual[key]), tower.grid)
    tower.load_state_dict(visual, strict=True)
    return tower


def build_clip_visual(sd, image_size=256, projector=True, drop_path=0.0):
    """The CLIP image tower of a CLIP state dict for inputs of image_size (int or (H, W)):
    sizes from shapes, positional table resized to the feature grid, loaded strictly."""
    tower = build_visual(clip_visual_config(sd, image_size), projector, drop_path)
    return load_clip_visual(tower, sd)


def resize_positional_tables(state_dict, model, source_grid=None):
    """(a new dict, names of resized tables): `state_dict`'s image positional tables resized to
    `model`'s grid, to initialise from another input size (COCO 256x192 -> AP-10K 256x256:
    attnpool 8x6+1 -> 8x8+1). source_grid: the checkpoint's model_config grid, else guessed."""
    own, out, resized = model.state_dict(), dict(state_dict), []
    for key in ("visual.attnpool.positional_embedding", "visual.positional_embedding"):
        if key not in out or key not in own or out[key].shape[1:] != own[key].shape[1:]:
            continue
        old = tuple(source_grid) if source_grid else guess_grid(out[key])
        if old != tuple(model.visual.grid):  # e.g. 8x6 -> 8x8, also 8x6 -> 6x8
            out[key] = resize_positional_table(out[key], old, model.visual.grid)
            resized.append(key)
    return out, resized


def resnet_config(sd):
    """ResNet50 kwargs from a torchvision resnet state dict's shapes."""
    return {"type": "resnet", "layers": [_count_blocks(sd, f"layer{i}.") for i in range(1, 5)],
            "width": sd["conv1.weight"].shape[0]}


def load_imagenet_resnet(path_or_sd):
    """A torchvision resnet50 state dict (file, read with weights_only=True, or dict) without
    the ImageNet classifier `fc.*` (dropped by name), checked key by key and shape by shape
    against `ResNet50` of the inferred size; `build_model` loads it with strict=True."""
    name, sd = "the given state dict", path_or_sd
    if isinstance(path_or_sd, (str, os.PathLike)):
        name = repr(os.fspath(path_or_sd))
        sd = torch_load(path_or_sd, "a torchvision resnet50 state dict")
    required = ("conv1.weight", "bn1.running_var", "layer1.0.conv3.weight",
                "layer4.0.downsample.0.weight")
    if not isinstance(sd, dict) or not all(k in sd for k in required):
        found = list(sd)[:3] if isinstance(sd, dict) else type(sd).__name__
        raise ValueError(f"{name} is not a torchvision resnet50 state dict (expected keys like "
                         f"{list(required)}, found {found}); save one with "
                         f"torch.save(torchvision.models.resnet50(weights=...).state_dict(), path)")
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    with torch.device("meta"):  # shapes only, nothing allocated
        expected = build_visual(resnet_config(sd)).state_dict()
    for k in expected:  # torchvision's classic weights predate BatchNorm's step counter
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.tensor(0)
    problems = [f"missing {k}" for k in expected if k not in sd]
    problems += [f"unexpected {k}" for k in sd if k not in expected]
    problems += [f"{k}: shape {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                 if k in sd and sd[k].shape != v.shape]
    if problems:
        raise ValueError(f"{name} does not match torchvision's resnet50 layout: "
                         f"{'; '.join(problems[:5])}{' ...' if len(problems) > 5 else ''}")
    return sd
