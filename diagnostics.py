"""Has the PromptPose branch learned anything? Two measurements on a batch, as pure functions.

  semantic_top1   Eq. 6-7: is keypoint n's sampled feature closest to prompt n (among the
                  labeled keypoints of its crop, the candidates L_semantic contrasts)?
  score_map_hits  Eq. 3-4: does S_n peak in the feature cell that holds keypoint n?

Both return per-keypoint hit counts and counts (K,) (sum them over batches and ranks, then
divide) and the chance level of a model that has learned nothing, from the tensors
`losses.semantic_loss` uses: those of `PoseModel.forward(images, return_extras=True)` in eval
mode and of a batch. Keypoints are (x, y) heatmap pixels (losses.py's convention: a heatmap of
width w spans [-0.5, w - 0.5], feature cell j of w0 covers [j w / w0 - 0.5, (j + 1) w / w0 - 0.5)).
"""
import torch

from dataset import make_loader
from distributed import all_reduce_sum
from losses import sample_keypoint_features, similarity_matrix


def keypoint_cells(keypoints, grid, heatmap_size):
    """The feature cell holding each keypoint: keypoints (B, K, 2) (x, y) heatmap pixels, grid
    (h0, w0), heatmap_size (h, w) -> (row, col) long (B, K) each. A keypoint outside the heatmap
    (a visible one can be, by up to 3 sigma) gets the border cell sample_keypoint_features reads."""
    (h0, w0), (h, w) = grid, heatmap_size
    col = torch.floor((keypoints[..., 0].float() + 0.5) * w0 / w).long().clamp(0, w0 - 1)
    row = torch.floor((keypoints[..., 1].float() + 0.5) * h0 / h).long().clamp(0, h0 - 1)
    return row, col


def semantic_top1(dense, prompts, keypoints, visible, heatmap_size):
    """Semantic matching top-1 (Eq. 6-7): for every labeled keypoint n of a crop, is M[n, n] the
    largest of M[n, m] over the crop's labeled keypoints m? dense (B, C, h0, w0) projected
    features; prompts (B, K, C) enhanced prompt embeddings; keypoints (B, K, 2) heatmap pixels;
    visible (B, K) bool (target_weight > 0); heatmap_size (h, w). Returns sums (add them over
    batches and ranks): 'hits' (K,) how often keypoint n matched its own prompt, 'counts' (K,)
    how often it was labeled, 'chance_sum' () float64; chance = chance_sum / counts.sum(), the
    mean over labeled keypoints of 1 / (labeled keypoints in its crop), a random ranking's top-1.
    Ties count as misses (a collapsed model whose M rows are constant scores 0, not chance)."""
    visible = visible.bool()
    keypoints = keypoints.masked_fill(~visible[..., None], 0)  # unlabeled may hold junk
    features = sample_keypoint_features(dense.float(), keypoints, heatmap_size)  # (B, K, C), Eq. 6
    M = similarity_matrix(features, prompts.float())  # (B, K, K), Eq. 7
    M = M.masked_fill(~visible[:, None, :], float("-inf"))  # candidates: labeled prompts only
    others = M.masked_fill(torch.eye(M.shape[-1], dtype=torch.bool, device=M.device), float("-inf"))
    hit = visible & (M.diagonal(dim1=1, dim2=2) > others.amax(dim=2))  # (B, K); one label: a hit
    n_labeled = visible.sum(dim=1, keepdim=True)  # (B, 1)
    chance_sum = (visible / n_labeled.clamp(min=1)).sum(dtype=torch.float64)  # crops with a label
    return {"hits": hit.sum(dim=0), "counts": visible.sum(dim=0), "chance_sum": chance_sum}


def score_map_hits(score_map, keypoints, visible, heatmap_size):
    """Score-map localisation (Eq. 3-4): does S_n's argmax over the (h0, w0) grid fall in the
    feature cell holding keypoint n? score_map (B, K, h0, w0) S; keypoints (B, K, 2) heatmap
    pixels; visible (B, K) bool; heatmap_size (h, w) -> {'hits' (K,) long, 'counts' (K,) long
    (labeled), 'chance': 1 / (h0 w0), a peak in a uniformly random cell}."""
    B, K, h0, w0 = score_map.shape
    visible = visible.bool()
    row, col = keypoint_cells(keypoints, (h0, w0), heatmap_size)  # (B, K) each
    peak = score_map.reshape(B, K, h0 * w0).argmax(dim=2)  # (B, K) flat cell index
    hit = visible & (peak == row * w0 + col)
    return {"hits": hit.sum(dim=0), "counts": visible.sum(dim=0), "chance": 1.0 / (h0 * w0)}


# ----------------------------------------------------------------------------- over a dataset
@torch.no_grad()
def branch_diagnostics(model, dataset, *, batch_size, workers, device, rank=0, world=1):
    """semantic_top1 and score_map_hits over the ground-truth boxes of a KeypointDataset (eval
    crops, no flip test; rank r takes boxes r, r + world, ..., the counts summed over ranks) ->
    {"semantic_top1", "score_map_hit"}: each {"value", "chance", "per_keypoint": {name: {"value",
    "chance", "labeled"}}} over the labeled keypoints; score_map_hit is None without S."""
    model.eval()
    size, K = tuple(dataset.heatmap_size), len(dataset.keypoint_names)
    # per keypoint, summed over crops: semantic hits, semantic chance (1 / labeled keypoints of
    # its crop: semantic_top1's chance_sum kept per keypoint), score-map hits, labeled counts
    sums, cells = torch.zeros(4, K, dtype=torch.float64, device=device), None
    subset = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world)))
    for batch in make_loader(subset, batch_size, workers, shuffle=False):
        out = model(batch["image"].to(device), return_extras=True)
        keypoints, visible = batch["keypoints"].to(device), batch["target_weight"].to(device) > 0
        top1 = semantic_top1(out["dense"], out["prompts"], keypoints, visible, size)
        sums[0] += top1["hits"]
        sums[1] += (visible / visible.sum(1, keepdim=True).clamp(min=1)).sum(0)  # (K,)
        sums[3] += top1["counts"]
        if "score_map" in out:
            cells = out["score_map"].shape[-2] * out["score_map"].shape[-1]
            sums[2] += score_map_hits(out["score_map"], keypoints, visible, size)["hits"]
    sums = all_reduce_sum(sums).cpu()

    def summary(hits, chance):  # (K,) sums -> overall (over labeled keypoints) and per keypoint
        labeled, total = sums[3], max(float(sums[3].sum()), 1.0)
        per_k = {n: {"value": float(hits[k] / labeled[k]) if labeled[k] else None,
                     "chance": float(chance[k] / labeled[k]) if labeled[k] else None,
                     "labeled": int(labeled[k])} for k, n in enumerate(dataset.keypoint_names)}
        return {"value": float(hits.sum()) / total, "chance": float(chance.sum()) / total,
                "per_keypoint": per_k}

    return {"semantic_top1": summary(sums[0], sums[1]),  # cells: None where no S (or no boxes)
            "score_map_hit": summary(sums[2], sums[3] / cells) if cells else None}


def format_branch_diagnostics(diagnostics):
    """Markdown lines: both measurements overall beside their chance, then per keypoint."""
    top1, hit = diagnostics["semantic_top1"], diagnostics["score_map_hit"]
    lines = [f"Language branch (ground-truth boxes, no flip test): semantic top-1 (Eq. 6-7) "
             f"{top1['value']:.3f} (chance {top1['chance']:.3f})" + (
                 f", score-map hit (Eq. 3-4) {hit['value']:.3f} (chance {hit['chance']:.3f})"
                 if hit else ", no score maps (no pixel-level branch)")]
    lines += ["| keypoint | labeled | semantic top-1 (chance) | score-map hit (chance) |",
              "|---|---|---|---|"]
    for name, v in top1["per_keypoint"].items():
        h = hit["per_keypoint"][name] if hit else {"value": None}
        cells = [f"{x['value']:.3f} ({x['chance']:.3f})" if x["value"] is not None else "-"
                 for x in (v, h)]
        lines.append(f"| {name} | {v['labeled']} | {cells[0]} | {cells[1]} |")
    return lines
