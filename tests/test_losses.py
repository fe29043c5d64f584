"""losses.py: each term against hand-computed values; the total loss falls on a tiny model."""
import math
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from recipe import default_loss_weights
from losses import (pixel_loss, pred_loss, sample_keypoint_features,
                    semantic_loss, similarity_matrix, symmetric_cross_entropy, total_loss)


def test_pred_and_pixel_loss_hand_computed():
    pred = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[5.0, 5.0], [5.0, 5.0]]]])  # (1, 2, 2, 2)
    target = torch.tensor([[[[0.0, 0.0], [0.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    weight = torch.tensor([[1.0, 0.0]])  # the second keypoint is unlabeled: ignored
    expected = (1.0 ** 2 + 3.0 ** 2) / 8  # mean over B*K*h*w = 8 entries
    assert pred_loss(pred, target, weight).item() == pytest.approx(expected)
    assert pixel_loss(pred, target, 0.5 * weight).item() == pytest.approx(0.25 * expected)


def cell_map():
    """dense (1, 2, 8, 8): channel 0 = row index i, channel 1 = column index j."""
    i, j = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    return torch.stack([i, j])[None]


def test_keypoint_at_cell_centre_samples_exactly_that_cell():
    """8x8 map on a 64x64 heatmap: cell (i, j) has its centre at x = 8j + 3.5, y = 8i + 3.5."""
    dense = cell_map()
    kp = torch.tensor([[[8 * 5 + 3.5, 8 * 2 + 3.5],    # centre of cell (2, 5)
                        [3.5, 8 * 7 + 3.5],             # centre of cell (7, 0)
                        [8 * 1 + 3.5 + 4, 3.5],         # halfway between cells (0, 1) and (0, 2)
                        [-0.5, 63.5]]])                 # heatmap corner: border cell (7, 0)
    feats = sample_keypoint_features(dense, kp, (64, 64))  # (1, 4, 2) as (row, col)
    expected = torch.tensor([[[2.0, 5.0], [7.0, 0.0], [0.0, 1.5], [7.0, 0.0]]])
    torch.testing.assert_close(feats, expected, rtol=0, atol=1e-6)


def test_sampling_convention_for_non_square_heatmaps():
    dense = cell_map()[:, :, :, :6]  # (1, 2, 8, 6) on a heatmap of h=64, w=48
    kp = torch.tensor([[[8 * 4 + 3.5, 8 * 3 + 3.5]]])  # cell (3, 4)
    torch.testing.assert_close(sample_keypoint_features(dense, kp, (64, 48)),
                               torch.tensor([[[3.0, 4.0]]]), rtol=0, atol=1e-6)


def semantic_example():
    """B=3, K=3, C=2 on an 8x8 map (64x64 heatmap), keypoints on cell centres.

    Sample 0: keypoints 0 and 2 visible at cells whose features are (3, 0) and (0, 1);
    keypoint 1 invisible, its prompt equal to keypoint 0's feature (it would matter if it
    took part). Sample 1: nothing visible. Sample 2: one visible keypoint (1x1 logits: loss 0).
    """
    dense = torch.zeros(3, 2, 8, 8)
    dense[:, :, 1, 1] = torch.tensor([3.0, 0.0])
    dense[:, :, 6, 4] = torch.tensor([0.0, 1.0])
    centre = lambda i, j: [8 * j + 3.5, 8 * i + 3.5]  # (x, y) of cell (i, j)
    kp = torch.tensor([[centre(1, 1), centre(1, 1), centre(6, 4)]] * 3)  # (3, 3, 2)
    prompts = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [1.0, 1.0]]] * 3)  # (3, 3, 2)
    visible = torch.tensor([[True, False, True], [False, False, False], [False, True, False]])
    return dense, prompts, kp, visible


def test_similarity_matrix_is_cosine_eq7():
    """M[b, i, j] = cos(feature i, prompt j), by hand; no temperature, any scale of the inputs."""
    features = torch.tensor([[[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])  # (1, 3, 2)
    prompts = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, -5.0]]])
    r = 1 / math.sqrt(2)
    expected = torch.tensor([[[1.0, r, 0.0], [0.0, r, -1.0], [r, 1.0, -r]]])
    torch.testing.assert_close(similarity_matrix(features, prompts), expected)
    torch.testing.assert_close(similarity_matrix(10 * features, prompts), expected)


def test_symmetric_cross_entropy_hand_computed_eq8():
    """Sample 0: all visible, M = [[2, 0], [1, 1]]: rows CE(row0, 0) = log(1 + e^-2),
    CE(row1, 1) = log 2; columns CE(col0, 0) = CE(col1, 1) = log(1 + e^-1).
    Sample 1: keypoint 1 invisible: only the 1x1 logit of keypoint 0 is left (loss 0),
    whatever the others hold. Mean over the B x K = 4 entries, the invisible one counting 0."""
    logits = torch.tensor([[[2.0, 0.0], [1.0, 1.0]], [[5.0, 100.0], [-100.0, 7.0]]])
    visible = torch.tensor([[True, True], [True, False]])
    rows = math.log(1 + math.exp(-2)) + math.log(2)
    cols = 2 * math.log(1 + math.exp(-1))
    expected = (0.5 * rows + 0.5 * cols + 0.0 + 0.0) / 4
    assert symmetric_cross_entropy(logits, visible).item() == pytest.approx(expected, rel=1e-6)
    everything = symmetric_cross_entropy(logits, torch.ones(2, 2, dtype=torch.bool))
    assert abs(everything.item() - expected) > 1  # the invisible keypoint would have mattered


def test_semantic_loss_hand_computed():
    """Eq. 7-8 by hand for sample 0 (scale 10): M = 10 * [[1, 1/sqrt2], [0, 1/sqrt2]];
    rows: CE(row0, 0), CE(row1, 1); columns: CE(col0, 0), CE(col1, 1). Each visible entry
    counts (CE_row + CE_col) / 2; the mean is over all B x K = 9 entries (the authors')."""
    dense, prompts, kp, visible = semantic_example()
    a = 10 / math.sqrt(2)
    rows = (math.log(1 + math.exp(a - 10)) + math.log(1 + math.exp(0 - a))) / 2
    cols = (math.log(1 + math.exp(0 - 10)) + math.log(2)) / 2
    expected = (rows + cols) / 9  # rows, cols above are means over the 2 visible keypoints
    logit_scale = torch.tensor(math.log(10.0), requires_grad=True)
    loss = semantic_loss(dense, prompts, kp, visible, logit_scale, (64, 64))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    everything_visible = semantic_loss(dense, prompts, kp, torch.ones(3, 3, dtype=torch.bool),
                                       logit_scale, (64, 64))
    assert abs(everything_visible.item() - expected) > 0.1  # the invisible keypoint mattered
    loss.backward()
    assert torch.isfinite(logit_scale.grad) and logit_scale.grad != 0
    kp[~visible] = float("nan")  # whatever an unlabeled keypoint holds is ignored
    dense.requires_grad_(True)
    again = semantic_loss(dense, prompts, kp, visible, logit_scale, (64, 64))
    again.backward()
    assert again.item() == loss.item() and torch.isfinite(dense.grad).all()


def test_semantic_loss_temperature_is_not_clamped():
    """As the authors' code: an inverse temperature of 1000 (beyond CLIP's clamp at 100) is used."""
    dense, prompts, kp, visible = semantic_example()
    prompts = prompts.flip(1)  # mismatched pairs: the loss grows with the inverse temperature
    M = similarity_matrix(sample_keypoint_features(dense, kp, (64, 64)), prompts)
    for scale in (100.0, 1000.0):
        loss = semantic_loss(dense, prompts, kp, visible, torch.tensor(math.log(scale)), (64, 64))
        assert loss.item() == pytest.approx(symmetric_cross_entropy(scale * M, visible).item(), rel=1e-4)
    assert loss.item() > 50


def test_semantic_loss_without_visible_keypoints_is_zero_with_graph():
    dense, prompts, kp, _ = semantic_example()
    dense.requires_grad_(True)
    loss = semantic_loss(dense, prompts, kp, torch.zeros(3, 3, dtype=torch.bool),
                         torch.tensor(math.log(1 / 0.07)), (64, 64))
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert torch.all(dense.grad == 0)  # zero, and not NaN


def test_total_loss_combines_terms_eq10():
    torch.manual_seed(0)
    dense, prompts, kp, visible = semantic_example()
    batch = {"target": torch.rand(3, 3, 64, 64), "target_weight": visible.float(), "keypoints": kp}
    outputs = {"heatmaps": torch.rand(3, 3, 64, 64), "pixel_heatmaps": torch.rand(3, 3, 64, 64),
               "dense": dense, "prompts": prompts}
    scale = torch.tensor(math.log(10.0))
    loss, parts = total_loss(outputs, batch, scale, alpha1=0.5, alpha2=2.0)
    pred = pred_loss(outputs["heatmaps"], batch["target"], batch["target_weight"])
    pixel = pixel_loss(outputs["pixel_heatmaps"], batch["target"], batch["target_weight"])
    semantic = semantic_loss(dense, prompts, kp, visible, scale, (64, 64))
    assert loss.item() == pytest.approx((pred + 0.5 * semantic + 2.0 * pixel).item())
    assert parts["semantic"].item() == pytest.approx(semantic.item()) and semantic > 0
    baseline, parts = total_loss({"heatmaps": outputs["heatmaps"]}, batch, None, 0.5, 2.0)
    assert baseline.item() == pytest.approx(pred.item()) and parts["pixel"] == parts["semantic"] == 0
    no_semantic, parts = total_loss(outputs, batch, scale, alpha1=0.0, alpha2=2.0)
    assert no_semantic.item() == pytest.approx((pred + 2.0 * pixel).item()) and parts["semantic"] == 0


def test_default_loss_weights():
    """The authors' alphas; 0 for the terms a SimpleBaseline or a pixel-less model lacks."""
    assert default_loss_weights("clip-rn50", "promptpose", True) == {"alpha1": 0.0005, "alpha2": 0.4}
    assert default_loss_weights("clip-vitb16", "promptpose", True) == {"alpha1": 0.0005, "alpha2": 2.0}
    assert default_loss_weights("clip-vitb16", "promptpose", False) == {"alpha1": 0.0005, "alpha2": 0.0}
    for backbone in ("clip-rn50", "clip-vitb16", "imagenet-rn50"):
        assert default_loss_weights(backbone, "baseline", True) == {"alpha1": 0.0, "alpha2": 0.0}


def test_total_loss_falls_when_training_a_tiny_model():
    """A few Adam steps of the small PromptPose on one fixed batch, the authors' loss weights:
    L_total, L_pred and L_pixel fall."""
    from model import build_model, default_config
    torch.manual_seed(0)
    names = ["nose", "left_eye", "right_eye", "tail"]
    model = build_model(default_config("clip-rn50", "promptpose", small=True, image_size=64), names)
    images = torch.randn(2, 3, 64, 64)
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    kp = torch.rand(2, 4, 2) * 15  # (B, K, 2) heatmap pixels
    target = torch.exp(-((xs - kp[..., 0, None, None]) ** 2 + (ys - kp[..., 1, None, None]) ** 2) / 8)
    batch = {"target": target, "target_weight": torch.ones(2, 4), "keypoints": kp}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    history = []
    for _ in range(8):
        loss, parts = total_loss(model(images), batch, model.logit_scale,
                                 **default_loss_weights("clip-rn50", "promptpose", True))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({"total": loss.item(), **{k: v.item() for k, v in parts.items()}})
    first, last = history[0], history[-1]
    assert last["total"] < 0.7 * first["total"]
    assert last["pred"] < first["pred"] and last["pixel"] < first["pixel"]
    assert all(math.isfinite(h["semantic"]) and h["semantic"] > 0 for h in history)
