"""PromptPose (paper Sec. 3) and the SimpleBaseline it is compared with.

Top to bottom: the image towers, each returning `(feature_map, global_embedding,
dense_embedding)` and loading real weights with strict=True -- `ModifiedResNet` (CLIP RN50,
whose attention pool is the paper's ResNet projector with every spatial token as a query),
`VisionTransformer` (CLIP ViT-B/16, projector = ln_post + proj per token), `ResNet50`
(torchvision keys, no projector) -- and their loaders; the PromptPose pieces (`PromptLearner`
Eq. 2, prompt encoder, context decoder of Sec. 3.2.1, `pixel_score_map` Eq. 3-4, `fuse` Eq. 9,
SimpleBaseline's keypoint head); `PromptPose`, `default_config`, `build_model`.

Sizes are (H, W), height first. Images are (B, 3, H, W). A CLIP positional table (RN50
attention pool 7x7+1, ViT-B 14x14+1 at 224) is resized once, bilinearly, when OpenAI weights
are loaded, to the feature grid of cfg['image_size'] (8x8 / 16x16 at 256x256), and learned
at that size; forward never resizes. The losses (Eq. 5-8, 10) live in `losses.py`.
"""
import json
import math
import os
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip_text import (LayerNorm, MultiheadAttention, TextEncoder, Transformer, text_state_dict,
                       tokenize)

BACKBONES = ("clip-rn50", "clip-vitb16", "imagenet-rn50")
METHODS = ("promptpose", "baseline")
NORMALIZATIONS = ("imagenet", "clip")  # the values live in dataset.NORMALIZATION
TOWER_TYPE = {"clip-rn50": "clip-resnet", "clip-vitb16": "clip-vit", "imagenet-rn50": "resnet"}
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device_type, amp):
    """The mixed-precision context of `--amp` ('none' | 'bf16' | 'fp16') on device_type."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"--amp {amp!r}: choose one of {', '.join(AMP_DTYPES)}")
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


# ----------------------------------------------------------------------------------------
# Image towers
# ----------------------------------------------------------------------------------------

def resize_positional_table(pos, old_grid, new_grid):
    """(1 + h*w, C) table of grid old_grid (h, w) -> (1 + h'*w', C) for new_grid (h', w').

    The first row (class / mean token) is kept; the spatial part is resized bilinearly
    (align_corners=False, as the authors). Returns `pos` itself when the grids agree.
    """
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
        raise ValueError(f"input gives a {grid[0]}x{grid[1]} feature grid but the positional "
                         f"table is {table_grid[0]}x{table_grid[1]}: feed images of the model's "
                         f"cfg['image_size'] (the table is resized only when weights are loaded)")


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
        if stride > 1 or inplanes != out:
            if antialias:  # OpenAI names the pool "-1" so the conv/bn keep indices 0 and 1
                self.downsample = nn.Sequential(OrderedDict([
                    ("-1", nn.AvgPool2d(stride)),
                    ("0", nn.Conv2d(inplanes, out, 1, bias=False)),
                    ("1", nn.BatchNorm2d(out))]))
            else:
                self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                                nn.BatchNorm2d(out))

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
    """CLIP's attention pool used as the dense projector of the paper (Sec. 3.2.2).

    Tokens = [mean of the grid, every grid cell] + positional embedding (1 + h*w rows for the
    grid (h, w)); every token is a query (CLIP queries only the mean token). Output 0 is CLIP's
    image embedding, the others form the dense embedding. Keys: positional_embedding, q_proj,
    k_proj, v_proj, c_proj.
    """

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

    def forward(self, x):
        """x (B, C, h, w) -> global (B, out), dense (B, out, h, w)."""
        B, C, h, w = x.shape
        check_grid((h, w), self.grid)
        tokens = map_to_tokens(x)  # (B, hw, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # (B, 1+hw, C)
        tokens = tokens + self.positional_embedding.to(x.dtype)
        L, nh = tokens.shape[1], self.num_heads

        def heads(t):  # (B, L, C) -> (B, nh, L, C/nh)
            return t.reshape(B, L, nh, C // nh).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(tokens)), heads(self.k_proj(tokens)),
                                             heads(self.v_proj(tokens)))  # (B, nh, L, C/nh)
        out = self.c_proj(out.transpose(1, 2).reshape(B, L, C))  # (B, 1+hw, out)
        return out[:, 0], tokens_to_map(out[:, 1:], h, w)


class ModifiedResNet(nn.Module):
    """CLIP's ResNet image tower (3-conv stem, anti-aliased strides, attention pool).

    forward(images (B,3,H,W)) -> feature_map (B, 32*width, H/32, W/32), global (B, output_dim)
    == CLIP encode_image, dense (B, output_dim, H/32, W/32). grid: the (H/32, W/32) feature
    grid of the attention pool's positional table. With projector=False (the SimpleBaseline)
    there is no attnpool and the last two are None.
    """

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
        self.init_parameters()

    def init_parameters(self):
        """CLIP's random init: attnpool weights N(0, C^-1/2), last BN of each block zero."""
        if self.attnpool is not None:
            std = self.attnpool.c_proj.in_features ** -0.5
            for lin in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj,
                        self.attnpool.c_proj):
                nn.init.normal_(lin.weight, std=std)
        for name, p in self.named_parameters():
            if name.startswith("layer") and name.endswith("bn3.weight"):
                nn.init.zeros_(p)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(self.relu(self.bn3(self.conv3(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 32w, H/32, W/32)
        if self.attnpool is None:
            return x, None, None
        global_embedding, dense = self.attnpool(x)
        return x, global_embedding, dense


class VisionTransformer(nn.Module):
    """CLIP's ViT image tower (patch conv, class token, ln_pre, transformer, ln_post, proj).

    forward(images) -> feature_map (B, width, H/p, W/p) (patch tokens before ln_post),
    global (B, output_dim) == CLIP encode_image, dense (B, output_dim, H/p, W/p)
    (ln_post and proj applied to every patch token). projector=False: no ln_post/proj.
    grid: the (H/p, W/p) grid of the positional table (1 + h*w rows). drop_path: stochastic
    depth rising linearly from 0 at the first block to this rate at the last (training only).
    """

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
    """torchvision's ResNet (v1.5 bottlenecks), key names as torchvision, without `fc`.

    forward(images) -> (layer4 output (B, 32*width, H/32, W/32), None, None).
    """

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
    """The grid (h, w) of a (1 + h*w, C) positional table when nothing says which: square
    (OpenAI's checkpoints), else the most nearly square h x w with h >= w (8x6, 16x12: the
    portrait 256x192 inputs of top-down pose estimation)."""
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
    """Tower kwargs inferred from the shapes of a CLIP state dict's `visual.*` tensors.

    ViT if `visual.proj` exists (heads = width // 64), else ModifiedResNet
    (heads = width * 32 // 64). 'grid' is the feature grid of image_size (H, W), or the
    checkpoint's own (7x7 / 14x14 for OpenAI's 224 models) when image_size is None.
    Returns {'type': 'clip-vit' | 'clip-resnet', **kwargs}.
    """
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
        raise ValueError(f"drop_path {drop_path}: stochastic depth is implemented for the ViT "
                         f"backbone only; use 0 for {vision_cfg['type']}")
    if vision_cfg["type"] == "clip-resnet":
        return ModifiedResNet(**kwargs, projector=projector)
    if vision_cfg["type"] == "resnet":
        return ResNet50(**kwargs)
    raise ValueError(f"unknown tower type {vision_cfg['type']!r}")


def load_clip_visual(tower, sd):
    """Load a CLIP state dict's `visual.*` into `tower` with strict=True.

    The positional table (OpenAI's: 7x7+1 / 14x14+1) is resized once, bilinearly, to
    the tower's grid; a tower without projector (SimpleBaseline) drops exactly the
    projector's keys (attnpool., ln_post., proj) by name.
    """
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
    """Resize the image tower's positional table in `state_dict` to `model`'s grid.

    For initialising from a checkpoint trained at another input size (COCO 256x192 -> AP-10K
    256x256: attnpool 8x6+1 -> 8x8+1), bilinearly, class row kept. source_grid (h, w): the
    checkpoint's grid (its model_config['vision']['grid']); default `guess_grid`.
    Returns (a new dict, names of the resized tables).
    """
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
    name = "the given state dict"
    sd = path_or_sd
    if isinstance(path_or_sd, (str, os.PathLike)):
        name = repr(os.fspath(path_or_sd))
        if not os.path.isfile(path_or_sd):
            raise FileNotFoundError(f"ImageNet ResNet-50 weights {name} do not exist")
        try:
            sd = torch.load(path_or_sd, map_location="cpu", weights_only=True)
        except Exception as e:  # zip/pickle/EOF errors alike: name the file and what we wanted
            raise ValueError(f"{name} could not be read as a torchvision resnet50 state dict "
                             f"({type(e).__name__}: {e})") from e
    required = ("conv1.weight", "bn1.running_var", "layer1.0.conv3.weight", "layer4.0.downsample.0.weight")
    if not isinstance(sd, dict) or not all(k in sd for k in required):
        found = list(sd)[:3] if isinstance(sd, dict) else type(sd).__name__
        raise ValueError(f"{name} is not a torchvision resnet50 state dict (expected keys like "
                         f"{list(required)}, found {found}); save one with "
                         f"torch.save(torchvision.models.resnet50(weights=...).state_dict(), path)")
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    with torch.device("meta"):  # shapes only, nothing allocated
        expected = build_visual(resnet_config(sd)).state_dict()
    problems = [f"missing {k}" for k in expected if k not in sd]
    problems += [f"unexpected {k}" for k in sd if k not in expected]
    problems += [f"{k}: shape {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                 if k in sd and sd[k].shape != v.shape]
    if problems:
        raise ValueError(f"{name} does not match torchvision's resnet50 layout: "
                         f"{'; '.join(problems[:5])}{' ...' if len(problems) > 5 else ''}")
    return sd


# ----------------------------------------------------------------------------------------
# PromptPose pieces (Sec. 3.2)
# ----------------------------------------------------------------------------------------

def default_prompt_texts(keypoint_names):
    """The text of each keypoint's prompt when the data gives none: 'left_eye' -> 'left eye'."""
    return [name.replace("_", " ").strip() for name in keypoint_names]


class PromptLearner(nn.Module):
    """Learnable prompts E_prompt^origin = T([SOT] ctx_1..ctx_n [text tokens] [EOT]) (Eq. 2).

    One set of n_ctx context vectors (n_ctx, width) is shared by all K prompts, initialised
    truncated-normal with std ctx_init_std cut at +-2 std (the authors: std 1); the frozen
    text encoder T maps each prompt to its EOT feature. Each prompt text is tokenised alone
    ([SOT, text, EOT]) and the context vectors are spliced in after SOT, the layout of CoOp's
    placeholder text 'X X ... X text'. Because the mask is causal, positions after the longest
    prompt's EOT cannot change any EOT feature, so the transformer runs only on
    1 + n_ctx + (longest text + 1) positions (13 for AP-10K with 8 contexts).
    """

    def __init__(self, text_encoder, prompt_texts, n_ctx=8, ctx_init_std=1.0):
        super().__init__()
        if not ctx_init_std > 0:
            raise ValueError(f"ctx_init_std must be > 0, got {ctx_init_std}")
        self.text_encoder = text_encoder.requires_grad_(False)  # frozen; gradients still pass through
        self.prompt_texts, self.n_ctx = list(prompt_texts), n_ctx
        self.ctx = nn.Parameter(torch.empty(n_ctx, text_encoder.config["width"]))
        nn.init.trunc_normal_(self.ctx, std=ctx_init_std, a=-2 * ctx_init_std, b=2 * ctx_init_std)
        tokens = tokenize(self.prompt_texts, context_length=text_encoder.context_length - n_ctx)
        eot_index = tokens.argmax(dim=-1)  # (K,) in the text-only sequence
        # derived from the texts, so not saved with the weights
        self.register_buffer("text_tokens", tokens[:, :int(eot_index.max()) + 1], persistent=False)  # (K, Lt)
        self.register_buffer("eot_index", eot_index + n_ctx, persistent=False)  # (K,) in the prompt

    def forward(self):
        """-> (K, embed_dim) prompt embeddings, one per prompt text."""
        K = self.text_tokens.shape[0]
        texts = self.text_encoder.token_embedding(self.text_tokens)  # (K, Lt, width): SOT, text, EOT, pad
        ctx = self.ctx.unsqueeze(0).expand(K, -1, -1).to(texts.dtype)  # (K, n_ctx, width)
        x = torch.cat([texts[:, :1], ctx, texts[:, 1:]], dim=1)  # (K, 1 + n_ctx + Lt - 1, width)
        return self.text_encoder.encode_embeddings(x, self.eot_index)


class PromptEncoder(nn.Module):
    """The prompt encoder of Sec. 3.2.1: one pre-LN transformer block over the K prompt
    embeddings (no mask, no positional embedding), then a LayerNorm `ln_final`, as the
    authors' code; PyTorch's default init. (B, K, C_emb) -> (B, K, C_emb)."""

    def __init__(self, width, heads):
        super().__init__()
        self.transformer = Transformer(width, 1, heads)
        self.ln_final = LayerNorm(width)

    def forward(self, x):
        return self.ln_final(self.transformer(x))


class ContextDecoderLayer(nn.Module):
    """Pre-LN decoder layer: self-attention over the prompts, cross-attention to the visual
    tokens, MLP; dropout on each residual branch (DenseCLIP's context decoder layer, whose
    q, k, v projections have no bias)."""

    def __init__(self, width, heads, dropout):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = LayerNorm(width), LayerNorm(width), LayerNorm(width)
        self.self_attn = MultiheadAttention(width, heads, bias=False)
        self.cross_attn = MultiheadAttention(width, heads, bias=False)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * width, width))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, memory):
        """x (B, K, width), memory (B, N, width) -> (B, K, width)."""
        x = x + self.dropout(self.self_attn(self.norm1(x)))
        x = x + self.dropout(self.cross_attn(self.norm2(x), memory, memory))
        return x + self.dropout(self.mlp(self.norm3(x)))


class ContextDecoder(nn.Module):
    """Cross-attention of the prompts to the visual tokens (Sec. 3.2.1, DenseCLIP style).

    forward(prompts (B, K, C_emb), visual (B, N, C_emb)) -> (B, K, C_emb): both are projected
    to `width`, run through `layers` decoder layers, and projected back to C_emb. Every
    projection weight truncated-normal std 0.02, biases 0 (DenseCLIP's init).
    """

    def __init__(self, embed_dim, width=256, heads=4, layers=3, dropout=0.1):
        super().__init__()
        self.memory_proj = nn.Sequential(LayerNorm(embed_dim), nn.Linear(embed_dim, width),
                                         LayerNorm(width))
        self.text_proj = nn.Sequential(LayerNorm(embed_dim), nn.Linear(embed_dim, width))
        self.decoder = nn.ModuleList([ContextDecoderLayer(width, heads, dropout)
                                      for _ in range(layers)])
        self.out_proj = nn.Sequential(LayerNorm(width), nn.Linear(width, embed_dim))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, MultiheadAttention):  # q, k, v: DenseCLIP's three Linear layers
                nn.init.trunc_normal_(m.in_proj_weight, std=0.02)

    def forward(self, prompts, visual):
        memory = self.memory_proj(visual)  # (B, N, width)
        x = self.text_proj(prompts)  # (B, K, width)
        for layer in self.decoder:
            x = layer(x, memory)
        return self.out_proj(x)  # (B, K, C_emb)


class KeypointHead(nn.Module):
    """SimpleBaseline's keypoint predictor f_pred: n x [deconv k4 s2, BN, ReLU], 1x1 conv.

    (B, in_channels, h0, w0) -> (B, out_channels, h0 * 2^n, w0 * 2^n). init_std: SimpleBaseline's
    init (convolutions N(0, init_std), final bias 0); None keeps PyTorch's default init, as the
    authors' code leaves the pixel head that upsamples S for L_pixel (Eq. 5).
    """

    def __init__(self, in_channels, out_channels, num_deconv, channels=256, init_std=0.001):
        super().__init__()
        layers = []
        for _ in range(num_deconv):
            layers += [nn.ConvTranspose2d(in_channels, channels, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
            in_channels = channels
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(in_channels, out_channels, 1)
        if init_std is not None:
            for m in self.modules():
                if isinstance(m, (nn.ConvTranspose2d, nn.Conv2d)):
                    nn.init.normal_(m.weight, std=init_std)
            nn.init.zeros_(self.final_layer.bias)

    def forward(self, x):
        return self.final_layer(self.deconv_layers(x))


def num_deconv_layers(grid, heatmap_size):
    """Number of x2 deconvolutions from the feature grid (h0, w0) to the heatmap (h, w)."""
    (h0, w0), (h, w) = grid, heatmap_size
    ratio = h // h0
    if h != h0 * ratio or w != w0 * ratio or ratio & (ratio - 1):
        raise ValueError(f"heatmap size {h}x{w} is not a power-of-two multiple of the feature "
                         f"grid {h0}x{w0}")
    return ratio.bit_length() - 1


def pixel_score_map(dense, prompts):
    """Pixel-level text-image matching score S, Eq. 3-4.

    S_ijn = F^_ij . E^_n: cosine similarity (no temperature) of the L2-normalised dense
    embedding dense (B, C_emb, h0, w0) and prompt embeddings prompts (B, K, C_emb)
    -> S (B, K, h0, w0).
    """
    f = F.normalize(dense, dim=1)  # (B, C, h0, w0)
    e = F.normalize(prompts, dim=-1)  # (B, K, C)
    return torch.einsum("bchw,bkc->bkhw", f, e)  # (B, K, h0, w0)


def fuse(feature_map, score_map):
    """F_fuse = F_origin (+) S, Eq. 9: channel concat (B, C, h0, w0), (B, K, h0, w0) -> (B, C+K, h0, w0)."""
    return torch.cat([feature_map, score_map.to(feature_map.dtype)], dim=1)


class PromptCache:
    """The prompt embeddings depend on the text side only: in eval mode under no_grad they are
    computed once (autocast off, in the weights' dtype) and reused while the device, dtype and
    `_version` (bumped by every in-place update: optimizer steps, load_state_dict) of every
    prompt-side parameter are unchanged."""

    def __init__(self):
        self.key = self.value = None

    def __call__(self, compute, *modules):
        """compute() -> tensor, cached against the parameters of `modules` (None: skipped)."""
        params = [p for m in modules if m is not None for p in m.parameters()]
        key = tuple((p.device, p.dtype, p._version) for p in params)
        if key != self.key:
            with torch.autocast(params[0].device.type, enabled=False):
                self.value = compute()
            self.key = key
        return self.value


class PromptPose(nn.Module):
    """PromptPose (cfg['method'] == 'promptpose') or SimpleBaseline ('baseline').

    Submodules: visual, prompt_learner (with .text_encoder, frozen), prompt_encoder,
    context_decoder, gamma, keypoint_head, pixel_head, logit_scale; the PromptPose-only ones
    are None for the baseline or when switched off by cfg['use_*'] (ignored for the baseline).
    prompt_texts: one text per keypoint for Eq. 2 (default `default_prompt_texts`).
    """

    def __init__(self, cfg, keypoint_names, prompt_texts=None):
        super().__init__()
        self.cfg = cfg
        self.keypoint_names = list(keypoint_names)
        self.prompt_texts = list(prompt_texts if prompt_texts is not None
                                 else default_prompt_texts(self.keypoint_names))
        K = len(self.keypoint_names)
        if len(self.prompt_texts) != K:
            raise ValueError(f"{len(self.prompt_texts)} prompt texts for {K} keypoints")
        if cfg["normalize"] not in NORMALIZATIONS:
            raise ValueError(f"normalize {cfg['normalize']!r}: choose one of {NORMALIZATIONS}")
        promptpose = cfg["method"] == "promptpose"
        self.visual = build_visual(cfg["vision"], promptpose, cfg["drop_path"])
        grid = feature_grid(cfg["image_size"], self.visual.stride)
        if "grid" in cfg["vision"] and tuple(cfg["vision"]["grid"]) != grid:
            raise ValueError(f"cfg['vision']['grid'] {cfg['vision']['grid']} is not the feature "
                             f"grid {list(grid)} of image_size {cfg['image_size']}")
        n_deconv = num_deconv_layers(grid, cfg["heatmap_size"])
        self.prompt_learner = self.prompt_encoder = self.context_decoder = self.pixel_head = None
        self.register_parameter("gamma", None)
        self.register_parameter("logit_scale", None)
        use_pixel = promptpose and cfg["use_pixel"]
        if promptpose:
            self.build_prompt_side(cfg, n_deconv)
        in_channels = self.visual.out_channels + (K if use_pixel else 0)
        self.keypoint_head = KeypointHead(in_channels, K, n_deconv, cfg["head_channels"])
        self.prompt_cache = PromptCache()

    def build_prompt_side(self, cfg, n_deconv):
        """Eq. 2 prompt learner, prompt encoder, context decoder + gamma, pixel head, logit scale."""
        K = len(self.keypoint_names)
        text_encoder = TextEncoder(**cfg["text"])
        embed_dim = text_encoder.config["embed_dim"]
        if embed_dim != cfg["vision"]["output_dim"]:
            raise ValueError(f"text embed_dim {embed_dim} != image output_dim "
                             f"{cfg['vision']['output_dim']}: the two CLIP halves must match")
        self.prompt_learner = PromptLearner(text_encoder, self.prompt_texts, cfg["n_ctx"],
                                            cfg["ctx_init_std"])
        if cfg["use_prompt_encoder"]:
            self.prompt_encoder = PromptEncoder(embed_dim, cfg["prompt_encoder_heads"])
        if cfg["use_cross_attn"]:
            self.context_decoder = ContextDecoder(embed_dim, cfg["decoder_width"],
                                                  cfg["decoder_heads"], cfg["decoder_layers"],
                                                  cfg["decoder_dropout"])
            self.gamma = nn.Parameter(torch.full((embed_dim,), 1e-3))
        if cfg["use_pixel"]:  # the authors leave this head at PyTorch's init (init_std None)
            self.pixel_head = KeypointHead(K, K, n_deconv, cfg["pixel_head_channels"] or K,
                                           init_std=None)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # used by L_semantic

    def train(self, mode=True):
        self.prompt_cache = PromptCache()
        return super().train(mode)

    def prompt_embeddings(self):
        """E_prompt^origin (Eq. 2, prompt learner) through the prompt encoder: (K, C_emb).
        In eval mode under no_grad it comes from `PromptCache`."""
        if not self.training and not torch.is_grad_enabled():
            return self.prompt_cache(self.encode_prompts, self.prompt_learner, self.prompt_encoder)
        return self.encode_prompts()

    def encode_prompts(self):
        prompts = self.prompt_learner()  # (K, C_emb), Eq. 2
        if self.prompt_encoder is not None:  # relations between the K prompts
            prompts = self.prompt_encoder(prompts[None])[0]  # (1, K, C) -> (K, C)
        return prompts

    def enhance_prompts(self, prompts, global_embedding, dense):
        """E_prompt = E + gamma * decoder(E, [global token, spatial tokens]) (Sec. 3.2.1).

        prompts (B, K, C), global_embedding (B, C), dense (B, C, h0, w0) -> (B, K, C).
        """
        memory = torch.cat([global_embedding[:, None], map_to_tokens(dense)], dim=1)  # (B, 1+hw, C)
        return prompts + self.gamma * self.context_decoder(prompts, memory)

    def forward(self, images, return_extras=False):
        """images (B, 3, H, W) -> dict.

        'heatmaps' (B, K, h, w) always. PromptPose adds 'score_map' S (B, K, h0, w0) when
        use_pixel; in training mode 'pixel_heatmaps' (B, K, h, w) (use_pixel, for L_pixel),
        'dense' (B, C_emb, h0, w0) and 'prompts' (B, K, C_emb) (for L_semantic); the last two
        also in eval mode with return_extras=True. The pixel head never runs in eval mode.
        """
        feature_map, global_embedding, dense = self.visual(images)
        if self.prompt_learner is None:  # SimpleBaseline
            return {"heatmaps": self.keypoint_head(feature_map)}
        out = {}
        prompts = self.prompt_embeddings().expand(images.shape[0], -1, -1)  # (B, K, C_emb)
        if self.context_decoder is not None:
            prompts = self.enhance_prompts(prompts, global_embedding, dense)
        fused = feature_map
        if self.pixel_head is not None:  # pixel-level branch (use_pixel)
            out["score_map"] = pixel_score_map(dense, prompts)  # (B, K, h0, w0)
            fused = fuse(feature_map, out["score_map"])
            if self.training:
                out["pixel_heatmaps"] = self.pixel_head(out["score_map"])
        out["heatmaps"] = self.keypoint_head(fused)
        if self.training or return_extras:
            out["dense"], out["prompts"] = dense, prompts
        return out


# ----------------------------------------------------------------------------------------
# Config and construction
# ----------------------------------------------------------------------------------------

FULL_VISION = {  # the feature grid is added by default_config from the image size
    "clip-rn50": {"type": "clip-resnet", "layers": [3, 4, 6, 3], "output_dim": 1024, "heads": 32,
                  "width": 64},
    "clip-vitb16": {"type": "clip-vit", "patch_size": 16, "width": 768, "layers": 12, "heads": 12,
                    "output_dim": 512},
    "imagenet-rn50": {"type": "resnet", "layers": [3, 4, 6, 3], "width": 64},
}
SMALL_VISION = {  # same structure, tiny (for CPU tests and the demo; never from a checkpoint)
    "clip-rn50": {"type": "clip-resnet", "layers": [1, 1, 1, 1], "output_dim": 64, "heads": 2,
                  "width": 16},
    "clip-vitb16": {"type": "clip-vit", "patch_size": 16, "width": 64, "layers": 2, "heads": 2,
                    "output_dim": 64},
    "imagenet-rn50": {"type": "resnet", "layers": [1, 1, 1, 1], "width": 16},
}


def check_backbone_method(backbone, method):
    if backbone not in BACKBONES or method not in METHODS:
        raise ValueError(f"backbone must be one of {BACKBONES} and method one of {METHODS}, "
                         f"got {backbone!r}, {method!r}")
    if method == "promptpose" and backbone == "imagenet-rn50":
        raise ValueError("PromptPose needs a CLIP backbone (its projector and text encoder come "
                         "from CLIP); use method 'baseline' with imagenet-rn50")


def default_config(backbone, method, *, small=False, image_size=(256, 256), heatmap_size=None,
                   **overrides):
    """The full architecture config (json-serialisable) that `build_model` turns into a model;
    every model default is written here and only here (the authors' values).

    backbone: 'clip-rn50' | 'clip-vitb16' | 'imagenet-rn50'; method: 'promptpose' | 'baseline'
    (PromptPose needs a CLIP backbone). small=True: a tiny model of the same structure for
    CPU tests and the demo. Sizes are [H, W]; heatmap_size defaults to image_size / 4; the
    tower's 'grid' (positional tables) is image_size / stride. overrides: any top-level key
    (e.g. normalize='clip', drop_path=0.1, n_ctx=16, ctx_init_std=0.02, use_pixel=False).
    Heads: keypoint head 256 wide (SimpleBaseline); pixel head 256 wide for RN50 (mmpose's
    default head), K wide for ViT-B (pixel_head_channels None = K); deconvolutions as many
    as the feature grid needs to reach the heatmap (3 for RN50, 2 for ViT-B at 256).
    """
    check_backbone_method(backbone, method)
    image_size = [image_size] * 2 if isinstance(image_size, int) else list(image_size)
    heatmap_size = [s // 4 for s in image_size] if heatmap_size is None else list(heatmap_size)
    promptpose, vit = method == "promptpose", backbone == "clip-vitb16"
    vision = dict((SMALL_VISION if small else FULL_VISION)[backbone])
    if vision["type"] != "resnet":
        vision["grid"] = list(feature_grid(image_size, vision.get("patch_size", 32)))
    text = None
    if promptpose:
        text = {"embed_dim": 64, "context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                "layers": 2} if small else \
               {"embed_dim": vision["output_dim"], "context_length": 77, "vocab_size": 49408,
                "width": 512, "heads": 8, "layers": 12}
    cfg = {
        "backbone": backbone, "method": method, "vision": vision, "text": text,
        "image_size": image_size, "heatmap_size": heatmap_size,
        "normalize": "imagenet",  # the authors' for every backbone (dataset.NORMALIZATION)
        "drop_path": 0.4 if vit else 0.0,  # ViT stochastic depth at the last block
        "n_ctx": 8, "ctx_init_std": 1.0,  # Eq. 2 context vectors (CoOp: 0.02)
        "use_pixel": promptpose, "use_prompt_encoder": promptpose, "use_cross_attn": promptpose,
        "prompt_encoder_heads": 8,
        "decoder_width": 32 if small else 256, "decoder_heads": 2 if small else 4,
        "decoder_layers": 3, "decoder_dropout": 0.1,
        "head_channels": 64 if small else 256,
        "pixel_head_channels": None if vit else (32 if small else 256),
    }
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; known: {sorted(cfg)}")
    cfg.update(overrides)
    return cfg


def build_model(cfg, keypoint_names, prompt_texts=None, clip_state_dict=None,
                imagenet_state_dict=None):
    """PromptPose / SimpleBaseline from a config, optionally with pretrained weights.

    clip_state_dict (CLIP backbones): cfg['vision'] (and cfg['text'] for PromptPose) are
    replaced by the sizes inferred from its shapes, the positional table is resized to the
    grid of cfg['image_size'] and the weights loaded strictly. imagenet_state_dict
    (imagenet-rn50): torchvision resnet50 weights (a dict, e.g. from `load_imagenet_resnet`, or
    a file path), `fc.*` dropped. `model.cfg` is the final config: `build_model(model.cfg,
    names, model.prompt_texts)` + `load_state_dict(sd, strict=True)` rebuilds the trained
    model without weight files. The use_* switches are ignored by the baseline.
    """
    cfg = json.loads(json.dumps(cfg))  # private, json-clean copy
    backbone, method = cfg["backbone"], cfg["method"]
    check_backbone_method(backbone, method)
    if clip_state_dict is not None:
        if not backbone.startswith("clip-"):
            raise ValueError(f"CLIP weights given for backbone {backbone!r}")
        cfg["vision"] = clip_visual_config(clip_state_dict, cfg["image_size"])
        if cfg["vision"]["type"] != TOWER_TYPE[backbone]:
            raise ValueError(f"backbone {backbone!r} but the CLIP weights hold a "
                             f"{cfg['vision']['type']} image tower")
        if method == "promptpose":
            cfg["text"] = TextEncoder.config_from_state_dict(text_state_dict(clip_state_dict))
    if imagenet_state_dict is not None:
        if backbone != "imagenet-rn50":
            raise ValueError(f"ImageNet ResNet weights given for backbone {backbone!r}")
        imagenet_state_dict = load_imagenet_resnet(imagenet_state_dict)
        cfg["vision"] = resnet_config(imagenet_state_dict)
    model = PromptPose(cfg, keypoint_names, prompt_texts)
    if clip_state_dict is not None:
        load_clip_visual(model.visual, clip_state_dict)
        if model.prompt_learner is not None:
            model.prompt_learner.text_encoder.load_state_dict(text_state_dict(clip_state_dict),
                                                              strict=True)
    if imagenet_state_dict is not None:
        model.visual.load_state_dict(imagenet_state_dict, strict=True)
    return model
