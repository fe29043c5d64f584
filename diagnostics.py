"""Has the PromptPose branch learned anything? Two measurements on a batch, as pure functions.

  semantic_top1   Eq. 6-7: is keypoint n's sampled feature closest to prompt n (among the
                  labeled keypoints of its crop, the candidates L_semantic contrasts)?
  score_map_hits  Eq. 3-4: does S_n peak in the feature cell that holds keypoint n?

Both return per-keypoint hit counts and counts (K,) (sum them over batches and ranks, then
divide) and the chance level of a model that has learned nothing. The inputs are those of
`PoseModel.forward(images, return_extras=True)` in eval mode ('dense', 'prompts',
'score_map') and of a batch ('keypoints', 'target_weight' > 0 as `visible`), the tensors
`losses.semantic_loss` uses. Keypoints are (x, y) in heatmap pixels (losses.py's convention:
a heatmap of width w spans [-0.5, w - 0.5], and feature cell j of w0 covers
[j w / w0 - 0.5, (j + 1) w / w0 - 0.5)).
"""
import torch

from losses import sample_keypoint_features, similarity_matrix


def keypoint_cells(keypoints, grid, heatmap_size):
    """The feature cell holding each keypoint: keypoints (B, K, 2) (x, y) heatmap pixels,
    grid (h0, w0), heatmap_size (h, w) -> (row, col) long tensors (B, K). A keypoint outside
    the heatmap extent (a visible one can be, by up to 3 sigma) gets the nearest border cell,
    as `sample_keypoint_features` reads the border there."""
    (h0, w0), (h, w) = grid, heatmap_size
    col = torch.floor((keypoints[..., 0].float() + 0.5) * w0 / w).long().clamp(0, w0 - 1)
    row = torch.floor((keypoints[..., 1].float() + 0.5) * h0 / h).long().clamp(0, h0 - 1)
    return row, col


def semantic_top1(dense, prompts, keypoints, visible, heatmap_size):
    """Semantic matching top-1 (Eq. 6-7): for every labeled keypoint n of a crop, is
    M[n, n] the largest of M[n, m] over the crop's labeled keypoints m?

    dense (B, C, h0, w0) projected features; prompts (B, K, C) enhanced prompt embeddings;
    keypoints (B, K, 2) heatmap pixels; visible (B, K) bool (target_weight > 0);
    heatmap_size (h, w). Returns {'hits' (K,) long, 'counts' (K,) long, 'chance_sum' () float64},
    all sums (add them over batches and ranks): keypoint n was labeled counts[n] times and
    matched its own prompt hits[n] times; chance = chance_sum / counts.sum() is the mean over
    labeled keypoints of 1 / (labeled keypoints in its crop), the top-1 of a random ranking.
    Ties count as misses (a collapsed model whose M rows are constant scores 0, not chance).
    """
    visible = visible.bool()
    keypoints = keypoints.masked_fill(~visible[..., None], 0)  # unlabeled may hold junk
    features = sample_keypoint_features(dense.float(), keypoints, heatmap_size)  # (B, K, C), Eq. 6
    M = similarity_matrix(features, prompts.float())  # (B, K, K), Eq. 7
    M = M.masked_fill(~visible[:, None, :], float("-inf"))  # candidates: labeled prompts only
    own = M.diagonal(dim1=1, dim2=2)  # (B, K)
    others = M.masked_fill(torch.eye(M.shape[-1], dtype=torch.bool, device=M.device), float("-inf"))
    hit = visible & (own > others.amax(dim=2))  # (B, K); one labeled keypoint: a hit (chance 1)
    n_labeled = visible.sum(dim=1, keepdim=True)  # (B, 1)
    chance_sum = (visible / n_labeled.clamp(min=1)).sum(dtype=torch.float64)  # crops with a label
    return {"hits": hit.sum(dim=0), "counts": visible.sum(dim=0), "chance_sum": chance_sum}


def score_map_hits(score_map, keypoints, visible, heatmap_size):
    """Score-map localisation (Eq. 3-4): does S_n's argmax over the (h0, w0) grid fall in the
    feature cell holding keypoint n, for every labeled keypoint?

    score_map (B, K, h0, w0) S; keypoints (B, K, 2) heatmap pixels; visible (B, K) bool;
    heatmap_size (h, w). Returns {'hits' (K,) long, 'counts' (K,) long, 'chance' float};
    chance = 1 / (h0 w0), a peak in a uniformly random cell.
    """
    B, K, h0, w0 = score_map.shape
    visible = visible.bool()
    row, col = keypoint_cells(keypoints, (h0, w0), heatmap_size)  # (B, K) each
    peak = score_map.reshape(B, K, h0 * w0).argmax(dim=2)  # (B, K) flat cell index
    hit = visible & (peak == row * w0 + col)
    return {"hits": hit.sum(dim=0), "counts": visible.sum(dim=0), "chance": 1.0 / (h0 * w0)}
