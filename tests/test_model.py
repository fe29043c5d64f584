"""model.py: backbone parity with open_clip / torchvision, positional tables resized once at
load, the prompt learner (Eq. 2), the authors' layer definitions and inits, shapes,
gradients, cache, switches."""
import json
import os

import open_clip
import pytest
import torch
import torch.nn.functional as F
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from clip_text import MultiheadAttention, TextEncoder, load_clip_state_dict, tokenize
from backbones import (FULL_VISION, build_clip_visual, build_visual, clip_visual_config,
                       load_imagenet_resnet, resize_positional_tables, resnet_config)
from model import (ContextDecoder, PoseModel, PromptLearner, autocast, build_model,
                   default_config, num_deconv_layers)

NAMES = ["left_eye", "right_eye", "nose", "neck", "root_of_tail", "left_shoulder", "left_elbow",
         "left_front_paw", "right_shoulder", "right_elbow", "right_front_paw", "left_hip",
         "left_knee", "left_back_paw", "right_hip", "right_knee", "right_back_paw"]
K = len(NAMES)


@torch.no_grad()
def randomise_(module, seed):
    """Make a randomly initialised reference a sensitive one: LN/BN affine and biases get
    non-default values (so swapping two same-shaped tensors changes the output), and BN
    running statistics are measured on random images (so activations stay input-dependent
    through 16 bottlenecks instead of fading into the biases)."""
    g = torch.Generator().manual_seed(seed)
    for name, t in module.state_dict().items():
        if t.is_floating_point() and t.ndim == 1 and not name.endswith(("running_mean", "running_var")):
            t.copy_((1 if name.endswith("weight") else 0) + 0.1 * torch.randn(t.shape, generator=g))
    norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if norms:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
        module.train()(torch.randn(2, 3, 224, 224, generator=g))
        for m in norms:
            m.momentum = 0.1
        module.eval()


PHOTO_TEXTS = ["a photo of the left front paw", "a photo of the nose", "a photo of the root of tail"]


def reference(name, seed, tmp_path_factory):
    """Weights of a randomly initialised open_clip model read back through a file and
    `load_clip_state_dict`, a test image and its `encode_image`, and `encode_text` of
    PHOTO_TEXTS (the reference is dropped)."""
    torch.manual_seed(seed)
    ref = open_clip.create_model(name, pretrained=None)
    randomise_(ref.visual, seed)
    ref.eval()
    path = tmp_path_factory.mktemp("clip") / f"{name}.pt"
    torch.save(ref.state_dict(), path)
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = ref.encode_image(images)
        text = ref.encode_text(open_clip.tokenize(PHOTO_TEXTS))
    sd = load_clip_state_dict(path)
    os.remove(path)  # hundreds of MB; do not leave it in pytest's temp dirs
    return {"sd": sd, "images": images, "expected": expected, "text": text}


@pytest.fixture(scope="module")
def clip_rn50(tmp_path_factory):
    return reference("RN50-quickgelu", 0, tmp_path_factory)


@pytest.fixture(scope="module")
def clip_vitb16(tmp_path_factory):
    return reference("ViT-B-16-quickgelu", 1, tmp_path_factory)


@pytest.fixture(scope="module")
def torchvision_rn50(tmp_path_factory):
    torch.manual_seed(2)
    ref = torchvision.models.resnet50(weights=None)
    randomise_(ref, 2)
    path = tmp_path_factory.mktemp("imagenet") / "resnet50.pth"
    torch.save(ref.state_dict(), path)
    return ref, path


def global_embedding(sd, images):
    with torch.no_grad():
        return build_clip_visual(sd, 224).eval()(images)[1]


@pytest.mark.parametrize("which, backbone", [("rn50", "clip-rn50"), ("vitb16", "clip-vitb16")])
def test_global_embedding_equals_open_clip_encode_image(which, backbone, request):
    """Sizes inferred from shapes; global_embedding == encode_image at 224, the checkpoint's
    own grid, where loading resizes nothing (<= 1e-4)."""
    ref = request.getfixturevalue(f"clip_{which}")
    grid = [7, 7] if which == "rn50" else [14, 14]
    assert clip_visual_config(ref["sd"]) == {**FULL_VISION[backbone], "grid": grid}
    assert clip_visual_config(ref["sd"], 256) == default_config(backbone, "promptpose")["vision"]
    assert ref["expected"].abs().mean() > 0.1  # a meaningful scale for the 1e-4 tolerance
    ours = global_embedding(ref["sd"], ref["images"])
    assert (ours - ref["expected"]).abs().max() <= 1e-4


def swapped(sd, a, b):
    bad = dict(sd)
    bad[a], bad[b] = sd[b], sd[a]
    return bad


@pytest.mark.parametrize("which, a, b", [
    ("rn50", "visual.attnpool.q_proj.weight", "visual.attnpool.k_proj.weight"),
    ("rn50", "visual.layer3.1.bn1.weight", "visual.layer3.1.bn2.weight"),
    ("vitb16", "visual.transformer.resblocks.5.ln_1.weight", "visual.transformer.resblocks.5.ln_2.weight"),
])
def test_one_mis_mapped_clip_weight_breaks_parity(which, a, b, request):
    ref = request.getfixturevalue(f"clip_{which}")
    bad = global_embedding(swapped(ref["sd"], a, b), ref["images"])
    assert (bad - ref["expected"]).abs().max() > 1e-2


def imagenet_tower(sd):
    tower = build_visual(resnet_config(sd))
    tower.load_state_dict(sd, strict=True)
    return tower.eval()


def test_imagenet_resnet_equals_torchvision(torchvision_rn50):
    """layer4 features == torchvision's resnet50 through a saved state dict; a swap breaks it."""
    ref, path = torchvision_rn50
    images = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        x = ref.maxpool(ref.relu(ref.bn1(ref.conv1(images))))
        expected = ref.layer4(ref.layer3(ref.layer2(ref.layer1(x))))
        sd = load_imagenet_resnet(path)
        assert "fc.weight" not in sd and "fc.weight" in torch.load(path, weights_only=True)
        features, global_embedding, dense = imagenet_tower(sd)(images)
        bad, _, _ = imagenet_tower(swapped(sd, "layer2.1.conv1.weight", "layer2.2.conv1.weight"))(images)
    assert global_embedding is None and dense is None
    assert (features - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert (bad - expected).abs().max() > 1e-2 * expected.abs().max()


def test_imagenet_loader_errors(tmp_path, torchvision_rn50):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_imagenet_resnet(tmp_path / "missing.pth")
    other = tmp_path / "other.pth"
    torch.save({"backbone.conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="other.pth.*not a torchvision resnet50"):
        load_imagenet_resnet(other)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(torchvision_rn50[1].read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated.pth"):
        load_imagenet_resnet(truncated)
    extra = dict(torch.load(torchvision_rn50[1], weights_only=True), **{"head.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected head.weight"):  # only fc.* may be dropped
        load_imagenet_resnet(extra)
    wrong = dict(extra, **{"layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3)})
    with pytest.raises(ValueError, match=r"layer1.0.conv1.weight: shape \(64, 64, 3, 3\)"):
        load_imagenet_resnet(wrong)


def test_imagenet_weights_saved_before_batchnorm_counted_steps_load(torchvision_rn50, tmp_path):
    """torchvision's classic resnet50 weights (2017) have no `num_batches_tracked` buffers."""
    sd = torch.load(torchvision_rn50[1], weights_only=True)
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert len(old) < len(sd)
    torch.save(old, tmp_path / "resnet50-classic.pth", _use_new_zipfile_serialization=False)
    loaded = load_imagenet_resnet(tmp_path / "resnet50-classic.pth")
    imagenet_tower(loaded)
    assert all(torch.equal(loaded[k], v) for k, v in old.items() if not k.startswith("fc."))


@pytest.mark.parametrize("backbone, method", [
    ("clip-rn50", "promptpose"), ("clip-rn50", "baseline"), ("clip-vitb16", "promptpose"),
    ("clip-vitb16", "baseline"), ("imagenet-rn50", "baseline")])
def test_full_size_forward_shapes(backbone, method, request):
    """Full-size models with pretrained-format weights at 256x256 -> 64x64 heatmaps; positional
    tables resized at load to the 8x8 / 16x16 grid; head shapes and inits as the authors'."""
    cfg = default_config(backbone, method)
    if backbone == "imagenet-rn50":
        model = build_model(cfg, NAMES, imagenet_state_dict=request.getfixturevalue("torchvision_rn50")[1])
    else:
        sd = request.getfixturevalue("clip_rn50" if backbone == "clip-rn50" else "clip_vitb16")["sd"]
        model = build_model(cfg, NAMES, clip_state_dict=sd)
    assert model.cfg["vision"] == cfg["vision"]  # inferred from the weights == default
    assert model.cfg["text"] == (cfg["text"] if method == "promptpose" else None)
    assert json.loads(json.dumps(model.cfg)) == model.cfg
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 256, 256), return_extras=True)
    grid, emb = (8, 1024) if backbone != "clip-vitb16" else (16, 512)
    assert out["heatmaps"].shape == (1, K, 64, 64)
    assert deconvs(model.keypoint_head) == ([256] * 3 if backbone != "clip-vitb16" else [256] * 2)
    assert model.keypoint_head.final_layer.weight.std() < 0.0015  # SimpleBaseline's N(0, 0.001)
    tables = [v for k, v in model.state_dict().items() if k.endswith("visual.positional_embedding")
              or k.endswith("attnpool.positional_embedding")]
    assert [t.shape[0] for t in tables] == ([1 + grid * grid] if tables else [])
    if method == "promptpose":
        assert out["score_map"].shape == (1, K, grid, grid)
        assert out["dense"].shape == (1, emb, grid, grid)
        assert out["prompts"].shape == (1, K, emb)
        assert "pixel_heatmaps" not in out
        # pixel head: mmpose's default 3 x 256 for RN50, 2 x K for ViT-B, at mmpose's N(0, 0.001)
        assert deconvs(model.pixel_head) == ([256] * 3 if backbone == "clip-rn50" else [K] * 2)
        assert model.pixel_head.final_layer.weight.shape[:2] == (K, model.pixel_head.final_layer.in_channels)
        assert model.pixel_head.final_layer.weight.std() < 0.0015 and model.pixel_head.final_layer.bias.abs().max() == 0
        ctx = model.prompt_learner.ctx  # (8, 512): truncated N(0, 1) at +-2, std 0.880
        assert ctx.shape == (8, 512) and ctx.abs().max() <= 2 and ctx.abs().max() > 1.8
        assert 0.84 < ctx.std().item() < 0.92
    else:
        assert set(out) == {"heatmaps"}
        assert model.prompt_learner is None  # and the CLIP projector was dropped by name:
        assert not any(k.startswith(("visual.attnpool.", "visual.ln_post.", "visual.proj"))
                       for k in model.state_dict())
    if backbone == "clip-vitb16":  # stochastic depth 0 -> 0.4 over the 12 visual blocks only
        rates = [b.drop_rate for b in model.visual.transformer.resblocks]
        assert rates == pytest.approx(torch.linspace(0, 0.4, 12).tolist()) and rates[0] == 0
    if method == "promptpose":
        assert all(b.drop_rate == 0 for b in model.prompt_learner.text_encoder.transformer.resblocks)


def deconvs(head):
    """Output channels of a head's deconvolutions."""
    return [m.out_channels for m in head.modules() if isinstance(m, torch.nn.ConvTranspose2d)]


@pytest.mark.parametrize("which", ["rn50", "vitb16"])
def test_full_size_tables_resized_once_at_load_256x192(which, request):
    """OpenAI's 7x7+1 / 14x14+1 table becomes the 8x6+1 / 16x12+1 table of 256x192 inputs,
    bilinearly (align_corners=False, class row kept); the tower then runs at 256x192 and
    refuses another input grid instead of resizing again."""
    sd = request.getfixturevalue(f"clip_{which}")["sd"]
    key, old, new = (("visual.attnpool.positional_embedding", 7, (8, 6)) if which == "rn50"
                     else ("visual.positional_embedding", 14, (16, 12)))
    tower = build_clip_visual(sd, (256, 192)).eval()
    table = tower.state_dict()[key[len("visual."):]]
    source = sd[key][1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(source, size=new, mode="bilinear", align_corners=False)
    assert table.shape[0] == 1 + new[0] * new[1] and torch.equal(table[0], sd[key][0])
    torch.testing.assert_close(table[1:], expected.permute(0, 2, 3, 1).reshape(new[0] * new[1], -1))
    with torch.no_grad():
        assert tower(torch.randn(1, 3, 256, 192))[2].shape[-2:] == new
        with pytest.raises(ValueError, match="feature grid"):
            tower(torch.randn(1, 3, 256, 256))


def test_promptpose_needs_clip_backbone():
    with pytest.raises(ValueError, match="CLIP backbone"):
        default_config("imagenet-rn50", "promptpose")


def test_clip_weights_of_wrong_tower_rejected(clip_vitb16):
    with pytest.raises(ValueError, match="clip-vit"):
        build_model(default_config("clip-rn50", "promptpose"), NAMES, clip_state_dict=clip_vitb16["sd"])


def small_model(backbone="clip-rn50", method="promptpose", seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = default_config(backbone, method, small=True, image_size=overrides.pop("image_size", 64))
    cfg.update(overrides)
    return build_model(cfg, NAMES)


def test_small_model_rebuilds_from_its_config():
    """model.cfg (json) + strict state dict -> the identical model (no weight files)."""
    model = small_model().eval()
    cfg = json.loads(json.dumps(model.cfg))
    clone = build_model(cfg, NAMES)
    clone.load_state_dict(model.state_dict(), strict=True)
    clone.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)["heatmaps"], clone(x)["heatmaps"])


def test_gradients_reach_prompts_and_backbone_not_text_weights():
    from losses import total_loss
    model = small_model().train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    batch = {"target": torch.rand(2, K, 16, 16), "target_weight": torch.ones(2, K),
             "keypoints": torch.rand(2, K, 2) * 15}
    loss, _ = total_loss(out, batch, model.logit_scale, alpha1=1.0, alpha2=1.0)
    loss.backward()
    def reached(module):
        return all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert model.prompt_learner.ctx.grad.abs().sum() > 0
    assert reached(model.prompt_encoder) and reached(model.context_decoder)
    assert reached(model.pixel_head) and reached(model.keypoint_head)
    assert model.visual.conv1.weight.grad.abs().sum() > 0
    assert model.visual.attnpool.q_proj.weight.grad.abs().sum() > 0
    assert model.gamma.grad.abs().sum() > 0 and model.logit_scale.grad != 0
    text = list(model.prompt_learner.text_encoder.parameters())
    assert text and all(not p.requires_grad and p.grad is None for p in text)


def test_prompt_cache_equals_uncached_and_invalidates():
    model = small_model("clip-vitb16").eval()
    calls = []
    model.prompt_learner.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        first = model(x, return_extras=True)  # computes (uncached) and stores
        second = model(x, return_extras=True)  # served from the cache
    assert len(calls) == 1
    for k in first:
        assert torch.equal(first[k], second[k])
    with torch.enable_grad():  # grad mode never uses the cache
        uncached = model(x, return_extras=True)
    assert len(calls) == 2 and all(torch.equal(uncached[k], first[k]) for k in first)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.prompt_learner.ctx.add_(0.5)  # an in-place weight update (e.g. an optimizer step)
        changed = model(x)
        assert len(calls) == 3 and not torch.equal(changed["score_map"], first["score_map"])
        model.load_state_dict(state)
        restored = model(x)
        assert len(calls) == 4 and torch.equal(restored["score_map"], first["score_map"])
    model.train()
    assert model.prompt_cache.value is None


@pytest.mark.parametrize("use_pixel, use_prompt_encoder, use_cross_attn", [
    (True, True, True), (False, True, True), (True, False, True), (True, True, False),
    (False, False, False)])
def test_ablation_switches(use_pixel, use_prompt_encoder, use_cross_attn):
    model = small_model(use_pixel=use_pixel, use_prompt_encoder=use_prompt_encoder,
                        use_cross_attn=use_cross_attn)
    assert (model.pixel_head is not None) == use_pixel
    assert (model.prompt_encoder is not None) == use_prompt_encoder
    assert (model.context_decoder is not None) == use_cross_attn == (model.gamma is not None)
    assert model.keypoint_head.deconv_layers[0].in_channels == 512 + (K if use_pixel else 0)
    runs = []
    for m in (model.pixel_head, model.prompt_encoder, model.context_decoder):
        if m is not None:
            m.register_forward_hook(lambda *a, m=m: runs.append(m))
    x = torch.randn(2, 3, 64, 64)
    out = model.train()(x)
    expected = {"heatmaps", "dense", "prompts"} | ({"score_map", "pixel_heatmaps"} if use_pixel else set())
    assert set(out) == expected
    assert len(runs) == use_pixel + use_prompt_encoder + use_cross_attn
    runs.clear()
    with torch.no_grad():
        out = model.eval()(x)
    assert set(out) == {"heatmaps"} | ({"score_map"} if use_pixel else set())
    assert model.pixel_head not in runs  # the pixel head never runs at inference


def test_baseline_has_only_backbone_and_head():
    model = small_model(method="baseline")
    assert {n for n, _ in model.named_children()} == {"visual", "keypoint_head"}
    assert isinstance(model, PoseModel) and model.prompt_learner is None
    assert model.logit_scale is None and model.gamma is None
    assert model.keypoint_head.deconv_layers[0].in_channels == 512
    assert set(model.train()(torch.randn(2, 3, 64, 64))) == {"heatmaps"}


@pytest.mark.parametrize("backbone, image_size, heatmap", [
    ("clip-rn50", (128, 128), (32, 32)), ("clip-vitb16", (128, 128), (32, 32)),
    ("clip-rn50", (256, 192), (64, 48)), ("imagenet-rn50", (64, 64), (16, 16))])
def test_other_input_sizes(backbone, image_size, heatmap):
    method = "baseline" if backbone == "imagenet-rn50" else "promptpose"
    model = small_model(backbone, method, image_size=image_size).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *image_size))["heatmaps"].shape == (1, K, *heatmap)


def test_num_deconv_layers():
    assert num_deconv_layers((8, 8), (64, 64)) == 3
    assert num_deconv_layers((16, 12), (64, 48)) == 2
    with pytest.raises(ValueError):
        num_deconv_layers((8, 8), (48, 48))


@pytest.mark.parametrize("backbone", ["clip-rn50", "clip-vitb16"])
def test_channels_last_matches_contiguous(backbone):
    model = small_model(backbone).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x, return_extras=True)
        model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last), return_extras=True)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=1e-5)



# ----------------------------------------------------------------------------------------
# Positional tables: resized once when weights are loaded, learned at the training grid
# ----------------------------------------------------------------------------------------

def small_clip_state_dict(backbone):
    """A CLIP-format state dict ('visual.*', text keys, logit_scale) of a small model whose
    positional table has the 224 grid of OpenAI's checkpoints (7x7 / 14x14)."""
    model = small_model(backbone, image_size=224, seed=5)
    sd = {f"visual.{k}": v for k, v in model.visual.state_dict().items()}
    sd.update(model.prompt_learner.text_encoder.state_dict())
    return {**sd, "logit_scale": torch.tensor(4.6)}


@pytest.mark.parametrize("backbone, key, grid", [
    ("clip-rn50", "visual.attnpool.positional_embedding", (8, 6)),
    ("clip-vitb16", "visual.positional_embedding", (16, 12))])
def test_table_resized_at_load_then_rebuilt_and_reinitialised(backbone, key, grid):
    """Weights of the 224 grid loaded for 256x192 inputs: the table is resized once (the
    config records the grid); the saved state dict loads back strictly into
    build_model(model.cfg, ...); resize_positional_tables carries it to a 256x256 model."""
    sd = small_clip_state_dict(backbone)
    cfg = default_config(backbone, "promptpose", small=True, image_size=(256, 192))
    model = build_model(cfg, NAMES, clip_state_dict=sd).eval()
    assert model.cfg["vision"]["grid"] == list(grid)
    assert model.state_dict()[key].shape[0] == 1 + grid[0] * grid[1]
    x = torch.randn(1, 3, 256, 192)
    with torch.no_grad():
        out = model(x)
        assert out["heatmaps"].shape == (1, K, 64, 48) and out["score_map"].shape[-2:] == grid
        with pytest.raises(ValueError, match="feature grid"):
            model(torch.randn(1, 3, 256, 256))
    saved = json.loads(json.dumps(model.cfg)), model.state_dict()
    clone = build_model(saved[0], NAMES, model.prompt_texts)
    clone.load_state_dict(saved[1], strict=True)
    with torch.no_grad():
        assert torch.equal(clone.eval()(x)["heatmaps"], out["heatmaps"])
    square = build_model(default_config(backbone, "promptpose", small=True, image_size=256), NAMES)
    resized_sd, resized = resize_positional_tables(saved[1], square)
    assert resized == [key] and resized_sd[key].shape[0] == 1 + square.visual.grid[0] * square.visual.grid[1]
    source = saved[1][key][1:].reshape(1, *grid, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(source, size=square.visual.grid, mode="bilinear", align_corners=False)
    torch.testing.assert_close(resized_sd[key][1:], expected.permute(0, 2, 3, 1).flatten(0, 2))
    assert torch.equal(resized_sd[key][0], saved[1][key][0])
    square.load_state_dict(resized_sd, strict=True)
    assert resize_positional_tables(resized_sd, square)[1] == []  # nothing left to resize


# ----------------------------------------------------------------------------------------
# The authors' layer definitions and inits
# ----------------------------------------------------------------------------------------

def test_vit_stochastic_depth_in_training_mode_only():
    """Two training-mode passes of the ViT tower differ (drop path 0.4 default), two eval-mode
    passes agree; with drop_path=0 training-mode passes agree too (nothing else is random)."""
    x = torch.randn(4, 3, 64, 64)
    visual = small_model("clip-vitb16").visual
    assert visual.transformer.resblocks[-1].drop_rate == pytest.approx(0.4)
    visual.train()
    assert not torch.allclose(visual(x)[0], visual(x)[0])
    visual.eval()
    assert torch.equal(visual(x)[0], visual(x)[0])
    plain = small_model("clip-vitb16", drop_path=0.0).visual.train()
    assert torch.equal(plain(x)[0], plain(x)[0])
    with pytest.raises(ValueError, match="ViT backbone only"):
        small_model("clip-rn50", drop_path=0.1)


def test_prompt_encoder_output_rows_are_layer_normed():
    """Block then ln_final: each output row has mean 0 and std 1 (default LN affine), whatever
    the input's offset and scale; the block alone would keep the offset of 3."""
    encoder = small_model().prompt_encoder
    x = 5 * torch.randn(2, K, 64) + 3
    with torch.no_grad():
        out = encoder(x)
        block_only = encoder.transformer(x)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, K), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(-1, unbiased=False), torch.ones(2, K), atol=1e-3, rtol=0)
    assert block_only.mean() > 2


def test_context_decoder_attention_has_no_qkv_bias_and_trunc_normal_init():
    torch.manual_seed(0)
    decoder = ContextDecoder(512, width=256, heads=4, layers=3)
    attentions = [m for m in decoder.modules() if isinstance(m, MultiheadAttention)]
    assert len(attentions) == 6 and all(m.in_proj_bias is None for m in attentions)
    assert not any("in_proj_bias" in k for k in decoder.state_dict())
    for m in attentions:
        assert abs(m.in_proj_weight.std().item() - 0.02) < 1e-3
    for m in decoder.modules():
        if isinstance(m, torch.nn.Linear):
            assert torch.all(m.bias == 0) and abs(m.weight.std().item() - 0.02) < 2e-3


def test_context_vectors_init_std_configurable():
    torch.manual_seed(0)
    encoder = TextEncoder(embed_dim=32, width=512, heads=8, layers=1)
    coop = PromptLearner(encoder, ["nose"], n_ctx=16, ctx_init_std=0.02).ctx  # (16, 512)
    assert coop.abs().max() <= 0.04 and 0.016 < coop.std().item() < 0.0185  # 0.02 * 0.880
    with pytest.raises(ValueError, match="ctx_init_std"):
        PromptLearner(encoder, ["nose"], n_ctx=4, ctx_init_std=0)
    with pytest.raises(ValueError, match=r"has 6 tokens .* 77 - n_ctx 73 positions .* --n-ctx"):
        PromptLearner(encoder, ["the left front paw"], n_ctx=73)


def test_autocast_map():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast("cpu", "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("cpu", "none"):
        assert (a @ b).dtype == torch.float32
    with pytest.raises(ValueError, match="--amp 'fp8'"):
        autocast("cpu", "fp8")


def test_config_overrides_and_errors():
    cfg = default_config("clip-vitb16", "promptpose", image_size=(256, 192), normalize="clip",
                         n_ctx=4)
    assert cfg["vision"]["grid"] == [16, 12] and cfg["heatmap_size"] == [64, 48]
    assert cfg["normalize"] == "clip" and cfg["n_ctx"] == 4
    with pytest.raises(ValueError, match="unknown model config keys.*'n_context'"):
        default_config("clip-rn50", "promptpose", n_context=4)
    with pytest.raises(ValueError, match="normalize 'caffe'"):
        small_model(normalize="caffe")
    with pytest.raises(ValueError, match="not a multiple of the backbone stride 32"):
        default_config("clip-rn50", "baseline", image_size=(250, 192))


# ----------------------------------------------------------------------------------------
# Prompt learner (paper Eq. 2) and prompt texts
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_encoder():
    torch.manual_seed(1)
    return TextEncoder(embed_dim=48, context_length=77, vocab_size=49408, width=128, heads=2, layers=3).eval()


def full_length_prompts(learner):
    """Independent reference: the same prompts run on all 77 positions."""
    enc, n_ctx = learner.text_encoder, learner.n_ctx
    tokens = tokenize(learner.prompt_texts, context_length=77 - n_ctx)  # (K, 77 - n_ctx)
    emb = enc.token_embedding(tokens)
    x = torch.cat([emb[:, :1], learner.ctx.expand(tokens.shape[0], -1, -1), emb[:, 1:]], dim=1)
    assert x.shape[1] == 77
    return enc.encode_embeddings(x, tokens.argmax(-1) + n_ctx)


def test_prompt_learner_exact_length_equals_77_positions(small_encoder):
    learner = PromptLearner(small_encoder, [n.replace("_", " ") for n in NAMES], n_ctx=8)
    # 'root of tail' etc. are 3 tokens: SOT + 8 ctx + 3 + EOT = 13 positions
    assert learner.text_tokens.shape[1] + learner.n_ctx == 13
    with torch.no_grad():
        out, ref = learner(), full_length_prompts(learner)
    assert out.shape == (17, 48)
    assert (out - ref).abs().max().item() < 1e-5
    assert (out[0] - out[1]).abs().max() > 1e-3  # different texts give different prompts


def test_prompt_layout_matches_coop_placeholder_text(small_encoder):
    texts = ["nose", "left eye", "right ear", "left ankle"]
    learner = PromptLearner(small_encoder, texts, n_ctx=4)
    x_id = tokenize("x")[0, 1].item()
    coop = tokenize(["X X X X " + text for text in texts])  # CoOp's way
    ours = torch.cat([learner.text_tokens[:, :1], torch.full((4, 4), x_id), learner.text_tokens[:, 1:]], dim=1)
    assert torch.equal(coop[:, :ours.shape[1]], ours) and (coop[:, ours.shape[1]:] == 0).all()
    assert torch.equal(learner.eot_index, coop.argmax(-1))


def test_prompt_learner_with_word_contexts_equals_open_clip_encode_text(clip_vitb16):
    """Eq. 2 end to end: with ctx set to the embeddings of 'a photo of the', the prompt
    embeddings equal open_clip's encode_text('a photo of the left front paw')."""
    encoder = TextEncoder.from_state_dict(clip_vitb16["sd"]).eval()
    learner = PromptLearner(encoder, [t[len("a photo of the "):] for t in PHOTO_TEXTS], n_ctx=4)
    with torch.no_grad():
        learner.ctx.copy_(encoder.token_embedding(tokenize("a photo of the")[0, 1:5]))
        assert (learner() - clip_vitb16["text"]).abs().max().item() <= 1e-4


def test_prompt_learner_gradients_reach_ctx_only(small_encoder):
    learner = PromptLearner(small_encoder, ["left eye", "nose"], n_ctx=8)
    assert [name for name, p in learner.named_parameters() if p.requires_grad] == ["ctx"]
    learner().pow(2).sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in learner.text_encoder.parameters())
    # ctx is the only new weight saved; the token ids are derived from the texts
    assert [k for k in learner.state_dict() if not k.startswith("text_encoder.")] == ["ctx"]


def test_prompt_learner_rejects_too_long_text(small_encoder):
    with pytest.raises(ValueError, match="context length 69"):
        PromptLearner(small_encoder, ["nose", "very " * 70], n_ctx=8)


def test_prompt_texts_default_and_given():
    """Default: the names with '_' -> ' '; given texts (e.g. 'tail root') are what is
    tokenised; they are kept on the model and must be one per keypoint."""
    model = small_model()
    assert model.prompt_texts[4] == "root of tail" == model.prompt_learner.prompt_texts[4]
    texts = ["tail root" if n == "root_of_tail" else n.replace("_", " ") for n in NAMES]
    torch.manual_seed(0)
    given = build_model(model.cfg, NAMES, texts)
    assert given.prompt_texts == texts and given.keypoint_names == NAMES
    assert torch.equal(given.prompt_learner.text_tokens[4, :4], tokenize("tail root")[0, :4])
    assert not torch.equal(given.prompt_learner.text_tokens[4], model.prompt_learner.text_tokens[4])
    with pytest.raises(ValueError, match="16 prompt texts for 17 keypoints"):
        build_model(model.cfg, NAMES, texts[:16])
