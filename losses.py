"""The three losses of PromptPose (paper Sec. 3.2.2-3.2.4), one function per term.

  L_pred      `pred_loss`      masked heatmap MSE of the keypoint head (Sec. 3.2.4)
  L_pixel     `pixel_loss`     masked heatmap MSE of the upsampled score map S (Eq. 5)
  L_semantic  `semantic_loss`  keypoint-feature / prompt contrast (Eq. 6-8): Eq. 6
              `sample_keypoint_features`, Eq. 7 `similarity_matrix`, Eq. 8 `symmetric_cross_entropy`
  L_total     `total_loss`     L_pred + alpha1 L_semantic + alpha2 L_pixel (Eq. 10)

Coordinate convention (shared with dataset.py): keypoints are (x, y) in heatmap pixels;
heatmap pixel i has its centre at integer i and covers [i - 0.5, i + 0.5], so a heatmap of
width w spans [-0.5, w - 0.5]. The dense embedding (h0, w0) covers the same extent, so its
cell j has its centre at heatmap x = (j + 0.5) * w / w0 - 0.5 (8j + 3.5 for 8 cells on 64).
"""
import torch
import torch.nn.functional as F


def pred_loss(heatmaps, target, target_weight):
    """L_pred (Sec. 3.2.4): keypoint-head heatmaps (B, K, h, w) vs Gaussian targets (B, K, h, w),
    masked MSE: mean over (B, K, h, w) of ((pred - gt) * weight)^2, target_weight (B, K) ->
    scalar (fp32) (mmpose's JointsMSELoss with target weights)."""
    weight = target_weight.float()[:, :, None, None]  # (B, K, 1, 1)
    return ((heatmaps.float() - target.float()) * weight).pow(2).mean()


def pixel_loss(pixel_heatmaps, target, target_weight):
    """L_pixel = MSE(S, H_target), Eq. 5: upsampled score map S (B, K, h, w), masked as L_pred."""
    return pred_loss(pixel_heatmaps, target, target_weight)


def sample_keypoint_features(dense, keypoints, heatmap_size):
    """F_keypoint, Eq. 6: bilinear grid-sampling of the dense embedding (B, C, h0, w0) at keypoints
    (B, K, 2) (x, y) in heatmap pixels (module docstring), heatmap_size (h, w) -> (B, K, C). grid =
    (x + 0.5) / w * 2 - 1 with align_corners=False maps the heatmap extent onto the dense map's,
    so a keypoint at a cell centre reads exactly that cell; beyond the outer centres, the border."""
    h, w = heatmap_size
    kp = keypoints.to(dense.dtype)
    grid = torch.stack([(kp[..., 0] + 0.5) / w * 2 - 1,
                        (kp[..., 1] + 0.5) / h * 2 - 1], dim=-1)[:, :, None]  # (B, K, 1, 2)
    feats = F.grid_sample(dense, grid, mode="bilinear", padding_mode="border",
                          align_corners=False)  # (B, C, K, 1)
    return feats[..., 0].transpose(1, 2)  # (B, K, C)


def similarity_matrix(features, prompts):
    """M = F^_keypoint E^_prompt^T, Eq. 7: cosine similarity (no temperature) of keypoint features
    (B, K, C) and prompts (B, K, C) -> (B, K, K), M[b, i, j] = cos(feature i, prompt j)."""
    f = F.normalize(features, dim=-1)  # (B, K, C)
    e = F.normalize(prompts, dim=-1)  # (B, K, C)
    return f @ e.transpose(1, 2)  # (B, K, K)


def symmetric_cross_entropy(logits, visible):
    """(CE(M, M_label) + CE(M^T, M_label)) / 2, Eq. 8, over visible keypoints only: logits
    (B, K, K) (M times the inverse temperature), visible (B, K) bool; M_label = arange. Per
    sample the (V, V) sub-matrix of its V visible keypoints is used (the paper's softmax). The
    mean is over all B x K entries, an invisible one counting 0 (the authors' normalisation);
    0, still attached to the graph, when nothing is visible."""
    visible = visible.bool()
    pair = visible[:, :, None] & visible[:, None, :]  # (B, K, K): both keypoints visible
    M = logits.masked_fill(~pair, torch.finfo(logits.dtype).min)  # finite: masked rows stay NaN-free
    ce_rows = -M.log_softmax(dim=2).diagonal(dim1=1, dim2=2)  # (B, K): CE(M, label) per row
    ce_cols = -M.log_softmax(dim=1).diagonal(dim1=1, dim2=2)  # (B, K): CE(M^T, label) per column
    return torch.where(visible, 0.5 * (ce_rows + ce_cols), torch.zeros_like(ce_rows)).mean()


def semantic_loss(dense, prompts, keypoints, visible, logit_scale, heatmap_size):
    """L_semantic, Eq. 6-8, over visible keypoints only, in fp32: dense (B, C, h0, w0) projected
    features; prompts (B, K, C) enhanced prompt embeddings; keypoints (B, K, 2) heatmap pixels;
    visible (B, K) bool; logit_scale scalar (log of the inverse temperature: scale =
    exp(logit_scale), not clamped, as the authors' code); heatmap_size (h, w)."""
    visible = visible.bool()
    keypoints = keypoints.masked_fill(~visible[..., None], 0)  # unlabeled may hold NaN / junk
    features = sample_keypoint_features(dense.float(), keypoints, heatmap_size)  # (B, K, C), Eq. 6
    M = logit_scale.float().exp() * similarity_matrix(features, prompts.float())  # (B, K, K), Eq. 7
    return symmetric_cross_entropy(M, visible)  # Eq. 8


def total_loss(outputs, batch, logit_scale, alpha1, alpha2):
    """L_total = L_pred + alpha1 * L_semantic + alpha2 * L_pixel, Eq. 10 -> (loss, {'pred',
    'pixel', 'semantic'} detached). outputs: the model's training-mode dict ('heatmaps'; for
    PromptPose 'pixel_heatmaps' when use_pixel, 'dense', 'prompts'); batch: 'target' (B, K, h, w),
    'target_weight' (B, K), 'keypoints' (B, K, 2). A keypoint is visible for L_semantic when its
    target weight is > 0 (labeled, inside the heatmap). A term whose inputs are absent
    (SimpleBaseline, pixel branch off) or whose weight is 0 is not computed and reported as 0."""
    target, weight = batch["target"], batch["target_weight"]
    pred = pred_loss(outputs["heatmaps"], target, weight)
    pixel = semantic = target.new_zeros(())
    if "pixel_heatmaps" in outputs and alpha2 != 0:
        pixel = pixel_loss(outputs["pixel_heatmaps"], target, weight)
    if "dense" in outputs and logit_scale is not None and alpha1 != 0:
        semantic = semantic_loss(outputs["dense"], outputs["prompts"], batch["keypoints"],
                                 weight > 0, logit_scale, target.shape[-2:])
    loss = pred + alpha1 * semantic + alpha2 * pixel
    return loss, {"pred": pred.detach(), "pixel": pixel.detach(), "semantic": semantic.detach()}
