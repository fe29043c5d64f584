"""model.py: backbone parity with open_clip / torchvision, shapes, gradients, cache, switches."""
import json
import os
import sys

import open_clip
import pytest
import torch
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from clip_text import load_clip_state_dict  # noqa: E402
from model import (FULL_VISION, PromptPose, build_clip_visual, build_model, build_visual,  # noqa: E402
                   clip_visual_config, default_config, load_imagenet_resnet, num_deconv_layers,
                   resnet_config)

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


def reference(name, seed, tmp_path_factory):
    """Weights of a randomly initialised open_clip model read back through a file and
    `load_clip_state_dict`, a test image and its `encode_image` (the reference is dropped)."""
    torch.manual_seed(seed)
    ref = open_clip.create_model(name, pretrained=None)
    randomise_(ref.visual, seed)
    ref.eval()
    path = tmp_path_factory.mktemp("clip") / f"{name}.pt"
    torch.save(ref.state_dict(), path)
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = ref.encode_image(images)
    return {"sd": load_clip_state_dict(path), "images": images, "expected": expected}


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
    """Sizes inferred from shapes; global_embedding == encode_image at 224 (<= 1e-4)."""
    ref = request.getfixturevalue(f"clip_{which}")
    assert clip_visual_config(ref["sd"]) == FULL_VISION[backbone]
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


@pytest.mark.parametrize("backbone, method", [
    ("clip-rn50", "promptpose"), ("clip-rn50", "baseline"), ("clip-vitb16", "promptpose"),
    ("clip-vitb16", "baseline"), ("imagenet-rn50", "baseline")])
def test_full_size_forward_shapes(backbone, method, request):
    """Full-size models with pretrained-format weights at 256x256 -> 64x64 heatmaps."""
    cfg = default_config(backbone, method)
    if backbone == "imagenet-rn50":
        model = build_model(cfg, NAMES, imagenet_state_dict=request.getfixturevalue("torchvision_rn50")[1])
    else:
        sd = request.getfixturevalue("clip_rn50" if backbone == "clip-rn50" else "clip_vitb16")["sd"]
        model = build_model(cfg, NAMES, clip_state_dict=sd)
    assert model.cfg["vision"] == FULL_VISION[backbone]
    assert model.cfg["text"] == (cfg["text"] if method == "promptpose" else None)  # inferred == default
    assert json.loads(json.dumps(model.cfg)) == model.cfg
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 256, 256), return_extras=True)
    grid, emb = (8, 1024) if backbone != "clip-vitb16" else (16, 512)
    assert out["heatmaps"].shape == (1, K, 64, 64)
    n_deconv = sum(isinstance(m, torch.nn.ConvTranspose2d) for m in model.keypoint_head.modules())
    assert n_deconv == (2 if backbone == "clip-vitb16" else 3)
    if method == "promptpose":
        assert out["score_map"].shape == (1, K, grid, grid)
        assert out["dense"].shape == (1, emb, grid, grid)
        assert out["prompts"].shape == (1, K, emb)
        assert "pixel_heatmaps" not in out
    else:
        assert set(out) == {"heatmaps"}
        assert model.prompt_learner is None  # and the CLIP projector was dropped by name:
        assert not any(k.startswith(("visual.attnpool.", "visual.ln_post.", "visual.proj"))
                       for k in model.state_dict())


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
    assert model._prompt_cache is None


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
    assert isinstance(model, PromptPose) and model.prompt_learner is None
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

