"""PromptPose (paper Sec. 3.2) and the SimpleBaseline it is compared with, in the paper's order.

Eq. 2 `PromptLearner` -> `PromptEncoder` -> `ContextDecoder` (the prompts attend to the image,
Sec. 3.2.1) -> Eq. 3-4 `pixel_score_map` -> Eq. 9 `fuse` -> `KeypointHead` (f_pred, and the
pixel head of L_pixel). `PoseModel` joins them on an image tower of backbones.py: PromptPose, or
SimpleBaseline (tower + keypoint head). `default_config` / `build_model` make a model from a json
config, the one its checkpoints store. The losses (Eq. 5-8, 10) are in losses.py. Sizes: (H, W).
"""
import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from backbones import (FULL_VISION, SMALL_VISION, build_visual, clip_visual_config, feature_grid,
                       load_clip_visual, load_imagenet_resnet, map_to_tokens, resnet_config)
from clip_text import (LayerNorm, MultiheadAttention, TextEncoder, Transformer,
                       load_clip_state_dict, text_state_dict, tokenize)
from distributed import print0
from keypoints import default_prompt_texts
from transforms import NORMALIZATION


class PromptLearner(nn.Module):
    """Learnable prompts E_prompt^origin = T([SOT] ctx_1..ctx_n [text tokens] [EOT]) (Eq. 2).
    One set of n_ctx context vectors (n_ctx, width), shared by all K prompts, initialised
    truncated-normal with std ctx_init_std cut at +-2 std (the authors: std 1); the frozen text
    encoder T maps each prompt to its EOT feature. Each text is tokenised alone ([SOT, text, EOT])
    and the context vectors are spliced in after SOT (CoOp's placeholder layout 'X X ... X text').
    The mask is causal, so positions after the longest prompt's EOT cannot change any EOT feature:
    the transformer runs only on 1 + n_ctx + (longest text + 1) positions (13 for AP-10K, 8 ctx)."""

    def __init__(self, text_encoder, prompt_texts, n_ctx=8, ctx_init_std=1.0):
        super().__init__()
        if not ctx_init_std > 0:
            raise ValueError(f"ctx_init_std must be > 0, got {ctx_init_std}")
        self.text_encoder = text_encoder.requires_grad_(False)  # frozen; gradients still pass through
        self.prompt_texts, self.n_ctx = list(prompt_texts), n_ctx
        self.ctx = nn.Parameter(torch.empty(n_ctx, text_encoder.config["width"]))
        nn.init.trunc_normal_(self.ctx, std=ctx_init_std, a=-2 * ctx_init_std, b=2 * ctx_init_std)
        try:
            tokens = tokenize(self.prompt_texts, context_length=text_encoder.context_length - n_ctx)
        except ValueError as e:  # tokenize's own advice (truncate=True) is not a flag
            raise ValueError(f"{str(e).split('; ')[0]}: {text_encoder.context_length} - n_ctx "
                             f"{n_ctx} positions are left for a prompt text; shorten the text "
                             f"(the json's keypoint_prompts) or lower --n-ctx") from None
        eot_index = tokens.argmax(dim=-1)  # (K,) in the text-only sequence
        # derived from the texts, so not saved with the weights
        self.register_buffer("text_tokens", tokens[:, :int(eot_index.max()) + 1], persistent=False)  # (K, Lt)
        self.register_buffer("eot_index", eot_index + n_ctx, persistent=False)  # (K,) in the prompt

    def forward(self):
        """-> (K, embed_dim) prompt embeddings, one per prompt text."""
        texts = self.text_encoder.token_embedding(self.text_tokens)  # (K, Lt, width): SOT, text, EOT, pad
        ctx = self.ctx.expand(len(texts), -1, -1).to(texts.dtype)  # (K, n_ctx, width)
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
    """Pre-LN decoder layer: self-attention over the prompts, cross-attention to the visual tokens,
    MLP; dropout on each residual branch (DenseCLIP's layer: q, k, v projections without bias)."""

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
    """Cross-attention of the prompts to the visual tokens (Sec. 3.2.1, DenseCLIP style): prompts
    (B, K, C_emb), visual (B, N, C_emb) -> (B, K, C_emb) through `layers` decoder layers `width`
    wide. Every projection weight truncated-normal std 0.02, biases 0 (DenseCLIP's init)."""

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


def pixel_score_map(dense, prompts):
    """Pixel-level text-image matching score S, Eq. 3-4: S_ijn = F^_ij . E^_n, the cosine
    similarity (no temperature) of the L2-normalised dense embedding dense (B, C_emb, h0, w0) and
    prompt embeddings prompts (B, K, C_emb) -> S (B, K, h0, w0)."""
    f = F.normalize(dense, dim=1)  # (B, C, h0, w0)
    e = F.normalize(prompts, dim=-1)  # (B, K, C)
    return torch.einsum("bchw,bkc->bkhw", f, e)  # (B, K, h0, w0)


def fuse(feature_map, score_map):
    """F_fuse = F_origin (+) S, Eq. 9: channel concat (B, C, h0, w0), (B, K, h0, w0) -> (B, C+K, h0, w0)."""
    return torch.cat([feature_map, score_map.to(feature_map.dtype)], dim=1)


class KeypointHead(nn.Module):
    """SimpleBaseline's keypoint predictor f_pred and its init: n x [deconv k4 s2, BN, ReLU], 1x1
    conv, (B, in_channels, h0, w0) -> (B, out_channels, h0 * 2^n, w0 * 2^n). Also the pixel head
    upsampling S for L_pixel (Eq. 5); the authors' code never initialises that one (it is built
    after init_weights) and its PyTorch-init noise delays the language branch (README, demo)."""

    def __init__(self, in_channels, out_channels, num_deconv, channels=256, init_std=0.001):
        super().__init__()
        layers = []
        for _ in range(num_deconv):
            layers += [nn.ConvTranspose2d(in_channels, channels, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
            in_channels = channels
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(in_channels, out_channels, 1)
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


class PoseModel(nn.Module):
    """PromptPose (cfg['method'] == 'promptpose') or SimpleBaseline ('baseline'). PromptPose-only
    submodules are None for the baseline or when switched off by cfg['use_*'] (ignored for the
    baseline). prompt_texts: one text per keypoint for Eq. 2 (default `default_prompt_texts`)."""

    def __init__(self, cfg, keypoint_names, prompt_texts=None):
        super().__init__()
        self.cfg, self.keypoint_names = cfg, list(keypoint_names)
        self.prompt_texts = list(prompt_texts if prompt_texts is not None
                                 else default_prompt_texts(self.keypoint_names))
        K = len(self.keypoint_names)
        if len(self.prompt_texts) != K:
            raise ValueError(f"{len(self.prompt_texts)} prompt texts for {K} keypoints")
        if cfg["normalize"] not in NORMALIZATION:
            raise ValueError(f"normalize {cfg['normalize']!r}: choose one of {sorted(NORMALIZATION)}")
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
        if promptpose:
            self.build_prompt_side(cfg, n_deconv)
        in_channels = self.visual.out_channels + (K if promptpose and cfg["use_pixel"] else 0)
        self.keypoint_head = KeypointHead(in_channels, K, n_deconv, cfg["head_channels"])
        self.prompt_cache, self.fixed_prompts = PromptCache(), None

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
        if cfg["use_pixel"]:
            self.pixel_head = KeypointHead(K, K, n_deconv, cfg["pixel_head_channels"] or K)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # used by L_semantic

    def train(self, mode=True):
        self.prompt_cache, self.fixed_prompts = PromptCache(), None
        return super().train(mode)

    def prompt_embeddings(self):
        """E_prompt^origin (Eq. 2, prompt learner) through the prompt encoder: (K, C_emb).
        In eval mode under no_grad it comes from `PromptCache`; `fixed_prompts` (set by
        export.py) makes it a constant of an exported program."""
        if self.fixed_prompts is not None:
            return self.fixed_prompts
        if not self.training and not torch.is_grad_enabled():
            return self.prompt_cache(self.encode_prompts, self.prompt_learner, self.prompt_encoder)
        return self.encode_prompts()

    def encode_prompts(self):
        prompts = self.prompt_learner()  # (K, C_emb), Eq. 2
        if self.prompt_encoder is not None:  # relations between the K prompts
            prompts = self.prompt_encoder(prompts[None])[0]  # (1, K, C) -> (K, C)
        return prompts

    def enhance_prompts(self, prompts, global_embedding, dense):
        """E_prompt = E + gamma * decoder(E, [global token, spatial tokens]) (Sec. 3.2.1):
        prompts (B, K, C), global_embedding (B, C), dense (B, C, h0, w0) -> (B, K, C)."""
        memory = torch.cat([global_embedding[:, None], map_to_tokens(dense)], dim=1)  # (B, 1+hw, C)
        return prompts + self.gamma * self.context_decoder(prompts, memory)

    def forward(self, images, return_extras=False):
        """images (B, 3, H, W) -> dict: 'heatmaps' (B, K, h, w) always. PromptPose adds 'score_map'
        S (B, K, h0, w0) when use_pixel; in training mode 'pixel_heatmaps' (B, K, h, w) (use_pixel,
        for L_pixel), 'dense' (B, C_emb, h0, w0) and 'prompts' (B, K, C_emb) (for L_semantic); the
        last two also in eval mode with return_extras=True. The pixel head never runs in eval."""
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


BACKBONES = ("clip-rn50", "clip-vitb16", "imagenet-rn50")
METHODS = ("promptpose", "baseline")


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
    every model default is written here and only here (the authors' values). backbone in
    BACKBONES, method in METHODS (PromptPose needs a CLIP backbone); small=True: a tiny model of
    the same structure for CPU tests and the demo. Sizes are [H, W]; heatmap_size defaults to
    image_size / 4; the tower's 'grid' (positional tables) is image_size / stride. overrides: any
    top-level key (e.g. normalize='clip', drop_path=0.1, n_ctx=16, ctx_init_std=0.02)."""
    check_backbone_method(backbone, method)
    image_size = [image_size] * 2 if isinstance(image_size, int) else list(image_size)
    heatmap_size = [s // 4 for s in image_size] if heatmap_size is None else list(heatmap_size)
    promptpose, vit = method == "promptpose", backbone == "clip-vitb16"
    vision = dict((SMALL_VISION if small else FULL_VISION)[backbone])
    if vision["type"] != "resnet":
        vision["grid"] = list(feature_grid(image_size, vision.get("patch_size", 32)))
    text = {"embed_dim": vision["output_dim"], "context_length": 77, "vocab_size": 49408,
            "width": 64 if small else 512, "heads": 2 if small else 8,
            "layers": 2 if small else 12} if promptpose else None
    cfg = {
        "backbone": backbone, "method": method, "vision": vision, "text": text,
        "image_size": image_size, "heatmap_size": heatmap_size,
        "normalize": "imagenet",  # the authors' for every backbone (transforms.NORMALIZATION)
        "drop_path": 0.4 if vit else 0.0,  # ViT stochastic depth at the last block
        "n_ctx": 8, "ctx_init_std": 1.0,  # Eq. 2 context vectors (CoOp: 0.02)
        "use_pixel": promptpose, "use_prompt_encoder": promptpose, "use_cross_attn": promptpose,
        "prompt_encoder_heads": 8,
        "decoder_width": 32 if small else 256, "decoder_heads": 2 if small else 4,
        "decoder_layers": 3, "decoder_dropout": 0.1,
        "head_channels": 64 if small else 256,  # SimpleBaseline's head
        "pixel_head_channels": None if vit else (32 if small else 256),  # None = K; 256: mmpose's
    }
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; known: {sorted(cfg)}")
    cfg.update(overrides)
    return cfg


def read_weights(backbone, method, clip_weights, imagenet_weights, random_init, small):
    """The pre-trained state dicts the backbone / method needs -> (clip_sd, imagenet_sd)."""
    needs_clip = backbone.startswith("clip") or method == "promptpose"
    needs_imagenet = backbone == "imagenet-rn50"
    if random_init:
        if clip_weights or imagenet_weights:
            raise ValueError("--random-init contradicts --clip-weights / --imagenet-weights")
        print0("NOTE: --random-init: every weight is random (no CLIP / ImageNet pre-training); "
               "results are not comparable to the paper")
        return None, None
    if small:
        raise ValueError("--small builds a reduced architecture that pre-trained weights do not "
                         "fit: add --random-init")
    missing = [flag for flag, needed, given in (
        ("--clip-weights RN50.pt/ViT-B-16.pt", needs_clip, clip_weights),
        ("--imagenet-weights resnet50.pth", needs_imagenet, imagenet_weights)) if needed and not given]
    if missing:
        raise ValueError(f"--backbone {backbone} --method {method} needs {' and '.join(missing)} "
                         f"(or --random-init to train from scratch)")
    return (load_clip_state_dict(clip_weights) if needs_clip else None,
            load_imagenet_resnet(imagenet_weights) if needs_imagenet else None)


def build_model(cfg, keypoint_names, prompt_texts=None, clip_state_dict=None,
                imagenet_state_dict=None):
    """PromptPose / SimpleBaseline from a config, optionally with pretrained weights, loaded
    strictly: clip_state_dict (CLIP backbones) sets cfg['vision'] (and cfg['text']) from its
    shapes, its positional table resized to cfg['image_size']; imagenet_state_dict: torchvision
    resnet50 weights (dict or path), `fc.*` dropped. `model.cfg` is the final config: with it,
    `build_model(model.cfg, names, model.prompt_texts)` + `load_state_dict(sd)` rebuilds a model."""
    cfg = json.loads(json.dumps(cfg))  # private, json-clean copy
    backbone, method = cfg["backbone"], cfg["method"]
    check_backbone_method(backbone, method)
    if clip_state_dict is not None:
        if not backbone.startswith("clip-"):
            raise ValueError(f"CLIP weights given for backbone {backbone!r}")
        cfg["vision"] = clip_visual_config(clip_state_dict, cfg["image_size"])
        if cfg["vision"]["type"] != FULL_VISION[backbone]["type"]:
            raise ValueError(f"backbone {backbone!r} but the CLIP weights hold a "
                             f"{cfg['vision']['type']} image tower")
        if method == "promptpose":
            cfg["text"] = TextEncoder.config_from_state_dict(text_state_dict(clip_state_dict))
    if imagenet_state_dict is not None:
        if backbone != "imagenet-rn50":
            raise ValueError(f"ImageNet ResNet weights given for backbone {backbone!r}")
        imagenet_state_dict = load_imagenet_resnet(imagenet_state_dict)
        cfg["vision"] = resnet_config(imagenet_state_dict)
    model = PoseModel(cfg, keypoint_names, prompt_texts)
    if clip_state_dict is not None:
        load_clip_visual(model.visual, clip_state_dict)
        if model.prompt_learner is not None:
            model.prompt_learner.text_encoder.load_state_dict(text_state_dict(clip_state_dict),
                                                              strict=True)
    if imagenet_state_dict is not None:
        model.visual.load_state_dict(imagenet_state_dict, strict=True)
    return model


AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device_type, amp):
    """The mixed-precision context of `--amp` ('none' | 'bf16' | 'fp16') on device_type."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"--amp {amp!r}: choose one of {', '.join(AMP_DTYPES)}")
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)
