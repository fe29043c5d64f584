"""The numbers of an evaluation, from predictions and a COCO ground truth (numpy and pycocotools
only): OKS-NMS and COCO keypoint AP as the authors ran them (mmpose), per-species and per-family
AP, PCK and pixel errors, and for a tracking user (a DeepLabCut project) PCK at pixel thresholds,
the error "with p-cutoff" and the matching of a found pose to its instance; the report's tables."""
import contextlib
import io
import warnings
from collections import Counter, defaultdict

import numpy as np
from pycocotools.cocoeval import COCOeval

from annotations import clip_box, index_coco

STAT_NAMES = ["AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL"]
OKS_NMS_THRESHOLD = 0.9   # drop an instance whose OKS with a better one exceeds this (oks_thr)


def oks_overlap(pose, others, area, other_areas, sigmas):
    """OKS of one pose (K, 3) with others (N, K, 3), as mmpose's oks_iou for NMS: every keypoint
    counts, the object scale is the mean of the two box areas:
        OKS = mean_k exp(-d_k^2 / (2 * (a + a') / 2 * (2 sigma_k)^2))   -> (N,)"""
    var = (2.0 * np.asarray(sigmas, np.float64)) ** 2                         # (K,)
    d2 = ((others[..., :2] - pose[None, :, :2]) ** 2).sum(-1)                 # (N, K)
    e = d2 / var / ((area + other_areas)[:, None] / 2 + np.spacing(1)) / 2
    return np.exp(-e).mean(1)


def oks_nms(poses, scores, areas, sigmas, threshold=OKS_NMS_THRESHOLD):
    """Greedy OKS-NMS (mmpose oks_nms): take the best-scored pose, drop every other whose OKS
    with it is above `threshold`, repeat. poses (N, K, 3), scores (N,), areas (N,) -> kept
    indices, best first (ties: the earlier pose first)."""
    poses, areas = np.asarray(poses, np.float64), np.asarray(areas, np.float64)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        order = rest[oks_overlap(poses[i], poses[rest], areas[i], areas[rest], sigmas) <= threshold]
    return keep


def nms_per_image(results, sigmas, threshold=OKS_NMS_THRESHOLD):
    """OKS-NMS among the predictions of each image; the area of a prediction is that of its
    crop box (scale_w x scale_h, as mmpose). Returns the kept results in their input order."""
    by_image = defaultdict(list)
    for j, r in enumerate(results):
        by_image[r["image_id"]].append(j)
    kept = []
    for idx in by_image.values():
        poses = np.array([results[j]["keypoints"] for j in idx]).reshape(len(idx), -1, 3)
        areas = np.array([np.prod(results[j]["scale"]) for j in idx])
        scores = np.array([results[j]["score"] for j in idx])
        kept += [idx[k] for k in oks_nms(poses, scores, areas, sigmas, threshold)]
    return [results[j] for j in sorted(kept)]


def coco_keypoint_eval(coco_gt, results, sigmas):
    """COCO keypoint AP (pycocotools, given sigmas) -> ({stat: value}, {category_id: AP or nan})."""
    if not results:
        raise ValueError("no predictions to evaluate (no boxes: empty dataset, or every "
                         "detection below --det-score-threshold?)")
    if min(coco_gt.anns, default=1) <= 0:  # pycocotools reads a ground-truth id 0 as "unmatched"
        coco_gt = index_coco(dict(coco_gt.dataset, annotations=[
            dict(a, id=n + 1) for n, a in enumerate(coco_gt.dataset["annotations"])]))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    scored = Counter(a["image_id"] for a in coco_gt.dataset["annotations"]
                     if a["num_keypoints"] > 0 and not a["iscrowd"])
    crowded = [n for n in scored.values() if n > ev.params.maxDets[-1]]
    if crowded:
        warnings.warn(f"{len(crowded)} image(s) hold more than {ev.params.maxDets[-1]} scored "
                      f"instances (up to {max(crowded)}): COCO keypoint AP takes at most "
                      f"{ev.params.maxDets[-1]} predictions an image (pycocotools, as mmpose), so "
                      f"AP stays below 1.0 there; the pixel errors and PCK count every instance")
    stats = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}
    precision = ev.eval["precision"]            # (T thresholds, R recalls, C cats, A areas, M dets)
    per_category = {}
    for c, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, c, 0, -1]           # area "all", maxDets 20
        per_category[cat_id] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
    return stats, per_category


def group_table(coco_gt, per_category):
    """Per-species and per-family (supercategory) AP, as AP-10K reports them: a family's AP
    is the mean over its species, like pycocotools averages over categories."""
    cats = coco_gt.loadCats(coco_gt.getCatIds())
    counts = {c["id"]: sum(a["num_keypoints"] > 0 and not a["iscrowd"]  # what COCOeval scores
                           for a in coco_gt.loadAnns(coco_gt.getAnnIds(catIds=[c["id"]])))
              for c in cats}
    species = [(c["name"], c.get("supercategory", ""), counts[c["id"]], per_category[c["id"]])
               for c in cats if counts[c["id"]] > 0]
    families = {}
    for name, family, n, ap in species:
        families.setdefault(family, []).append((n, ap))
    family_rows = [(f, sum(n for n, _ in v), float(np.nanmean([ap for _, ap in v])))
                   for f, v in families.items()]
    return species, family_rows


def matched_keypoints(results, coco):
    """Predictions from ground-truth boxes (not detections: ann_id None) next to their instance:
    pred (N, K, 2), scores (N, K), gt (N, K, 2), labeled (N, K) bool (v > 0), box (N, 2) = (w, h)
    of the instance's box clipped to the image."""
    rows = [r for r in results if r["ann_id"] is not None]
    anns = [coco.anns[r["ann_id"]] for r in rows]
    K = len(results[0]["keypoints"]) // 3 if results else 0
    pred = np.array([r["keypoints"] for r in rows], np.float64).reshape(len(rows), K, 3)
    gt = np.array([a["keypoints"] for a in anns], np.float64).reshape(len(rows), K, 3)
    box = np.array([clip_box(a["bbox"], coco.imgs[a["image_id"]]["width"],
                             coco.imgs[a["image_id"]]["height"])[2:] for a in anns]).reshape(-1, 2)
    return pred[..., :2], pred[..., 2], gt[..., :2], gt[..., 2] > 0, box


def pck_accuracy(pred, gt, labeled, normalize, threshold):
    """PCK as mmpose's keypoint_pck_accuracy: a labeled keypoint is correct when
    || (pred - gt) / normalize || < threshold, normalize (N, 2) per axis; mmpose's norm_item='bbox'
    passes (max(w, h), max(w, h)) of the ground-truth box. Returns (per keypoint (K,), nan where
    never labeled; overall = mean over the labeled keypoints' values, as mmpose averages)."""
    valid = labeled & (normalize > 0).all(1)[:, None]                             # (N, K)
    dist = np.linalg.norm((pred - gt) / np.maximum(normalize, 1e-12)[:, None, :], axis=-1)
    count = valid.sum(0)
    per_keypoint = np.where(count > 0, ((dist < threshold) & valid).sum(0) / np.maximum(count, 1),
                            np.nan)
    overall = float(np.nanmean(per_keypoint)) if (count > 0).any() else float("nan")
    return per_keypoint, overall


def pixel_errors(pred, gt, labeled):
    """Pixel error of the labeled keypoints in image pixels: RMSE = sqrt(mean of squared
    Euclidean distances) and the mean Euclidean distance, overall and per keypoint (nan where
    never labeled). Returns (rmse (K,), rmse, mean (K,), mean)."""
    d = np.linalg.norm(pred - gt, axis=-1)                                       # (N, K)
    count = labeled.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rmse_k = np.sqrt((d ** 2 * labeled).sum(0) / count)
        mean_k = (d * labeled).sum(0) / count
    n = labeled.sum()
    rmse = float(np.sqrt((d[labeled] ** 2).mean())) if n else float("nan")
    mean = float(d[labeled].mean()) if n else float("nan")
    return rmse_k, rmse, mean_k, mean


def pck_pixels(pred, gt, labeled, thresholds):
    """PCK at pixel thresholds: a labeled keypoint is correct when its error is below t image
    pixels. Returns (overall (T,): the fraction of all labeled keypoints, pooled as the pixel
    errors are; per keypoint (T, K), nan where never labeled)."""
    d = np.linalg.norm(pred - gt, axis=-1)                                       # (N, K)
    t = np.asarray(thresholds, np.float64)[:, None, None]                        # (T, 1, 1)
    correct = (d[None] < t) & labeled[None]                                      # (T, N, K)
    count = labeled.sum(0)                                                       # (K,)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_keypoint = correct.sum(1) / count                                    # (T, K)
        overall = correct.sum((1, 2)) / labeled.sum()                            # (T,)
    return overall, per_keypoint


def pcutoff_errors(pred, gt, labeled, scores, pcutoff):
    """DeepLabCut's error "with p-cutoff": the pixel errors of the labeled keypoints predicted
    with a score of at least `pcutoff` only (a keypoint the model is unsure of is one a user
    drops). scores (N, K). Returns (pixel_errors(...) of those, kept (K,), kept overall): kept
    is the fraction of the labeled keypoints that pass the cutoff (nan where never labeled)."""
    sure = labeled & (scores >= pcutoff)                                         # (N, K)
    with np.errstate(invalid="ignore", divide="ignore"):
        kept = sure.sum(0) / labeled.sum(0)
    return pixel_errors(pred, gt, sure), kept, float(sure.sum() / max(labeled.sum(), 1))


def nearest_instance(pose, truths, labeled):
    """The ground-truth instance a found pose belongs to: the one whose labeled keypoints lie
    nearest on average. pose (K, 2), truths (M, K, 2), labeled (M, K) -> index, or None when
    no instance has a labeled keypoint. (OKS would weigh keypoints by sigmas a DeepLabCut
    project does not have; the mean distance needs none.)"""
    d = np.linalg.norm(truths - pose[None], axis=-1)                             # (M, K)
    count = labeled.sum(1)
    if not count.any():
        return None
    mean = np.where(count > 0, (d * labeled).sum(1) / np.maximum(count, 1), np.inf)
    return int(mean.argmin())


def match_instances(poses, coco, instances):
    """Give each found pose (COCO results: 'image_id', flat 'keypoints') the 'ann_id' of the
    nearest of its image's instances (instances: {image_id: [ann ids]}), None where none has a
    labeled keypoint. Each pose is matched on its own: one animal per image is the case this
    serves (a DeepLabCut project); with several, two poses may pick one instance."""
    for pose in poses:
        ann_ids = instances[pose["image_id"]]
        truth = np.array([coco.anns[a]["keypoints"] for a in ann_ids],
                         np.float64).reshape(len(ann_ids), -1, 3)                    # (M, K, 3)
        n = nearest_instance(np.reshape(pose["keypoints"], (-1, 3))[:, :2], truth[..., :2],
                             truth[..., 2] > 0)
        pose["ann_id"] = None if n is None else ann_ids[n]
    return poses


def keypoint_accuracy(results, coco, names, pck_threshold, pixel_thresholds=(), pcutoff=None):
    """PCK (box-relative), pixel errors and PCK at each of pixel_thresholds ('pck_5px', ...) of the
    predictions that belong to a ground-truth instance, overall and per keypoint (None when every
    box is a detection); with pcutoff also the errors with p-cutoff ('pcutoff_rmse_px', ...)."""
    pred, scores, gt, labeled, box = matched_keypoints(results, coco)
    if not labeled.any():
        return {**dict.fromkeys(["pck", "rmse_px", "mean_error_px", "pcutoff_rmse_px",
                                 "pcutoff_mean_error_px", "pcutoff_kept"]
                                + [f"pck_{t:g}px" for t in pixel_thresholds]), "per_keypoint": {}}
    side = box.max(1, keepdims=True).repeat(2, 1)                                # (N, 2)
    pck_k, pck = pck_accuracy(pred, gt, labeled, side, pck_threshold)
    rmse_k, rmse, mean_k, mean = pixel_errors(pred, gt, labeled)
    pck_all, pck_px = pck_pixels(pred, gt, labeled, pixel_thresholds)
    # (name, per-keypoint values (K,), overall value) of each metric
    rows = [("pck", pck_k, pck), ("rmse_px", rmse_k, rmse), ("mean_error_px", mean_k, mean)]
    rows += [(f"pck_{t:g}px", k, v) for t, k, v in zip(pixel_thresholds, pck_px, pck_all.tolist())]
    if pcutoff is not None:
        (rmse_k, rmse, mean_k, mean), kept_k, kept = pcutoff_errors(pred, gt, labeled, scores,
                                                                    pcutoff)
        rows += [("pcutoff_rmse_px", rmse_k, rmse), ("pcutoff_mean_error_px", mean_k, mean),
                 ("pcutoff_kept", kept_k, kept)]
    overall, per_keypoint = {}, [{"labeled": int(n)} for n in labeled.sum(0)]
    for key, per_k, value in rows:
        overall[key] = value
        for entry, v in zip(per_keypoint, per_k.tolist()):
            entry[key] = v
    return {**overall, "per_keypoint": dict(zip(names, per_keypoint))}


# ----------------------------------------------------------------------------- the report
GT_BOXES = "the json's (a converted DeepLabCut project's: the labels' extent + margin)"
FULL_FRAME = ("each image searched as an own photo without --boxes, the pose matched to the "
              "nearest instance of its image by mean keypoint distance")
NO_PIXEL_ERRORS = ("No pixel errors: they need ground-truth boxes (a detected box, --det-boxes, "
                   "belongs to no labeled instance to measure against)")


def report_columns(report):
    """(title, metrics, instances) of each column: val / train x ground-truth boxes / full frame."""
    sets = [("val, ", report)] + ([("train, ", report["train"])] if "train" in report else [])
    columns = []
    for name, r in sets:
        name = name if len(sets) > 1 else ""
        columns.append((name + "ground-truth boxes", r, str(r["instances"])))
        if r.get("full_frame"):
            f = r["full_frame"]
            columns.append((name + "full frame", f, f"{f['matched']} of {f['instances']}"))
    return columns


def has_pixel_errors(report):
    """Whether a column of the report has pixel errors (none when every box is a detection:
    keypoint_accuracy gives None then)."""
    return any(c[1]["rmse_px"] is not None for c in report_columns(report))


def pixel_lines(report, detail):
    """The pixel errors of every column side by side; with detail per body part too. None to
    show (detected boxes): one line that says they need ground-truth boxes."""
    if not has_pixel_errors(report):
        return [NO_PIXEL_ERRORS]
    columns, cut = report_columns(report), f"p >= {report['pcutoff']:g}"
    rows = [("RMSE px", "rmse_px", 2), ("mean error px", "mean_error_px", 2)]
    rows += [(f"PCK@{t:g} px", f"pck_{t:g}px", 3) for t in report["pck_pixels"]]
    rows += [(f"RMSE px, {cut}", "pcutoff_rmse_px", 2), (f"mean error px, {cut}",
             "pcutoff_mean_error_px", 2), (f"kept at {cut}", "pcutoff_kept", 3)]

    def row(label, values):
        return f"| {label} |" + "".join(f" {v} |" for v in values)

    def number(value, digits):
        return "-" if value is None else f"{value:.{digits}f}"

    head = [row("", [c[0] for c in columns]), "|---|" + "---|" * len(columns)]
    lines = head + [row("instances", [c[2] for c in columns])]
    lines += [row(label, [number(c[1][key], d) for c in columns]) for label, key, d in rows]
    lines.append(f"ground-truth boxes: {GT_BOXES}" + (f"; full frame: {FULL_FRAME}" if any(
        "full frame" in c[0] for c in columns) else "") + ". DeepLabCut's train / test error "
        "(evaluate_network) is the mean error: its 'RMSE' is each point's distance, averaged")
    if detail:
        lines += ["", "Per body part, RMSE / mean error px (PCK and p-cutoff errors per body "
                  "part: metrics.json):", *head]
        lines += [row(k, [" / ".join(number(c[1]["per_keypoint"].get(k, {}).get(m), 2)
                                     for m in ("rmse_px", "mean_error_px")) for c in columns])
                  for k in report["per_keypoint"]]
    return lines


def format_report(report, detail=True):
    """The report as markdown tables. With OKS sigmas (AP-10K): AP/AR, PCK and pixel error; with
    detail also per keypoint, per species and per family (worst first), and the pixel table when
    there is more than one column (full frame, train). Without sigmas (a DeepLabCut project): the
    pixel table first (detected boxes: a line that they have none), then AP, marked as resting
    on a placeholder; without detail one line."""
    stats = report["stats"]
    table = ["| " + " | ".join(STAT_NAMES[:6]) + " |", "|" + "---|" * 6,
             "| " + " | ".join(f"{stats[k]:.3f}" for k in STAT_NAMES[:6]) + " |"]
    counts = (f"{report['instances']} instances, {report['nms_removed']} removed by OKS-NMS at "
              f"{OKS_NMS_THRESHOLD}; {report['skipped']}")
    pixels = has_pixel_errors(report)
    if not report["sigmas_given"] and not detail and not pixels:
        return f"{NO_PIXEL_ERRORS}; AP {stats['AP']:.3f} on a placeholder OKS sigma"
    if not report["sigmas_given"] and not detail:  # one line in a training log
        pck = [f"PCK@{t:g} px {report[f'pck_{t:g}px']:.3f}" for t in report["pck_pixels"]]
        return (f"RMSE {report['rmse_px']:.2f} px, mean error {report['mean_error_px']:.2f} px, "
                f"{', '.join(pck)} (ground-truth boxes); AP {stats['AP']:.3f} on a placeholder "
                f"OKS sigma")
    if not report["sigmas_given"]:
        return "\n".join(pixel_lines(report, detail) + [
            "", "AP on a placeholder OKS sigma (the data gives none; --sigmas or the json's "
            "'sigmas' make it meaningful)" + (": compare runs on the pixel errors above" if
            pixels else ""), *table, counts])
    lines = table + ([f"PCK@{report['pck_threshold']:g} {report['pck']:.3f}, RMSE "
                      f"{report['rmse_px']:.2f} px, mean error {report['mean_error_px']:.2f} px "
                      f"(ground-truth boxes, labeled keypoints)"] if report["pck"] is not None
                     else []) + [counts]
    if detail and report["per_keypoint"]:
        lines += ["", "| keypoint | labeled | PCK | RMSE px |", "|---|---|---|---|"]
        lines += [f"| {n} | {v['labeled']} | {v['pck']:.3f} | {v['rmse_px']:.2f} |"
                  for n, v in report["per_keypoint"].items()]
    if detail and len(report["species"]) > 1:
        lines += ["", "Per species (worst first):", "| species | family | instances | AP |",
                  "|---|---|---|---|"]
        lines += [f"| {s['species']} | {s['family']} | {s['instances']} | {s['AP']:.3f} |"
                  for s in sorted(report["species"], key=lambda s: np.nan_to_num(s["AP"]))]
        lines += ["", "Per family (worst first):", "| family | instances | AP |", "|---|---|---|"]
        lines += [f"| {f['family']} | {f['instances']} | {f['AP']:.3f} |"
                  for f in sorted(report["families"], key=lambda f: np.nan_to_num(f["AP"]))]
    if report["pck"] is not None and ("train" in report or "full_frame" in report):
        lines += ["", *pixel_lines(report, detail)]
    return "\n".join(lines)
