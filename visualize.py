"""Every figure of the project, drawn with OpenCV only (numpy in, BGR uint8 image out): poses over
an image (`overlay`), the paper's Fig. 3 (score maps S, Eq. 3) and Fig. 2 (matching matrix M,
Eq. 7) of one crop (`paper_figures` runs the model for them), and curves.png. Sides come from the
flip pairs (a flip swaps exactly the left/right keypoints); which member of a pair is the left one
is read from the names (`left_eye`, `L_Eye`, `eyeL`, ...).
"""
import itertools
import math
import os

import cv2
import numpy as np
import torch

from files import atomic_file
from losses import sample_keypoint_features, similarity_matrix
from transforms import NORMALIZATION

SIDE_COLOURS = {"left": (0, 150, 255), "right": (255, 150, 30), "centre": (230, 60, 230)}  # BGR
# keypoint colours: per side a family of OpenCV hues (0..180) around its limb colour
SIDE_HUES = {"left": (4, 26), "right": (88, 122), "centre": (128, 158)}
BOX_COLOUR = (235, 235, 235)
CURVE_COLOUR = (180, 90, 20)
GROUND_TRUTH_COLOUR = (255, 255, 255)  # white with a dark halo: visible on any background
HALO = (20, 20, 20)
MASKED_COLOUR = (200, 200, 200)
FONT = cv2.FONT_HERSHEY_SIMPLEX
COLOURMAP = cv2.COLORMAP_VIRIDIS


# ----------------------------------------------------------------------------- files, text
def write_image(path, image):
    """An image file (format from the extension), written atomically; OSErrors name the path."""
    ok, data = cv2.imencode(os.path.splitext(path)[1] or ".png", image)
    if not ok:
        raise OSError(f"could not encode image {path}")
    try:
        with atomic_file(path) as f:
            f.write(data.tobytes())
    except OSError as e:
        raise OSError(f"could not write image {path} ({e.strerror or e})") from None


def text_size(text, scale, thickness=1):
    (w, h), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    return w, h + baseline


def put_text(image, text, org, scale, colour=(0, 0, 0), thickness=1):
    """Text whose top-left corner is at org (cv2 anchors at the baseline)."""
    x, y = int(org[0]), int(org[1])
    h = cv2.getTextSize(text, FONT, scale, thickness)[0][1]
    cv2.putText(image, text, (x, y + h), FONT, scale, colour, thickness, cv2.LINE_AA)


def vertical_text(text, scale, colour=(0, 0, 0), background=255):
    """Text rotated 90 degrees counter-clockwise (reads bottom to top): (w_text, h_text) image."""
    w, h = text_size(text, scale)
    canvas = np.full((h + 2, w + 2, 3), background, np.uint8)
    put_text(canvas, text, (1, 1), scale, colour)
    return cv2.rotate(canvas, cv2.ROTATE_90_COUNTERCLOCKWISE)


def paste(canvas, image, x, y):
    h, w = image.shape[:2]
    canvas[y:y + h, x:x + w] = image


# ----------------------------------------------------------------------------- poses
def limb_side(sides, a, b):
    """A limb is left (right) when an end is left (right) and none is on the other side."""
    ends = {sides[a], sides[b]} - {"centre"}
    return ends.pop() if len(ends) == 1 else "centre"


def style_for(image):
    """Line thickness, dot radius and font scale that stay readable at any image size."""
    size = min(image.shape[:2])
    thickness, radius = max(1, round(size / 250)), max(2, round(size / 120))
    return thickness, radius, float(np.clip(size / 700, 0.35, 1.0))


def keypoint_colours(sides):
    """One BGR colour per keypoint, its side's hues (SIDE_HUES) spread in keypoint order: the n-th
    left and n-th right keypoint (usually a flip pair) match; neighbours alternate in brightness."""
    colours = [None] * len(sides)
    for side, (low, high) in SIDE_HUES.items():
        members = [k for k, s in enumerate(sides) if s == side]
        for rank, k in enumerate(members):
            hue = low + (high - low) * rank / max(len(members) - 1, 1)
            saturation, value = (255, 190) if rank % 2 else (200, 255)
            hsv = np.uint8([[[round(hue), saturation, value]]])
            colours[k] = tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])
    return colours


def place_label(size, point, offset, taken, image_size):
    """Top-left corner of a (w, h) label next to `point`: the first of right / left x above /
    below (then 1-3 label heights further out) inside the image and overlapping no rectangle
    in `taken` (else the first inside), clamped into the image; appended to `taken`."""
    (w, h), (x, y), (W, H) = size, point, image_size
    spots = [(u, v) for n in range(4) for u in (x + offset, x - offset - w)
             for v in (y - offset - h - n * h, y + offset + n * h)]
    inside = [(u, v) for u, v in spots if 0 <= u and u + w <= W and 0 <= v and v + h <= H]
    free = [(u, v) for u, v in inside if not any(u < a + c and a < u + w and v < b + d and b < v + h
                                                for a, b, c, d in taken)]
    u, v = (free or inside or spots)[0]
    u, v = int(min(max(u, 0), max(W - w, 0))), int(min(max(v, 0), max(H - h, 0)))
    taken.append((u, v, w, h))
    return u, v


def draw_label(image, text, point, offset, font, taken):
    """The text in white on a darkened patch (readable on any background) beside `point`."""
    w, h = text_size(text, font)
    u, v = place_label((w + 4, h + 2), point, offset, taken, (image.shape[1], image.shape[0]))
    patch = image[v:v + h + 2, u:u + w + 4]
    patch[:] = (patch * 0.3).astype(np.uint8)
    put_text(image, text, (u + 2, v + 1), font, (255, 255, 255))


def draw_pose(image, keypoints, skeleton, sides, threshold, ground_truth=False, names=None):
    """Draw one pose in place. keypoints (K, 3): [x, y, score] of a prediction (drawn where
    score >= threshold, as the p-cutoff metrics keep it: limbs in the side colours, dots in
    keypoint_colours, `names` beside them), or [x, y, v] of ground truth (drawn where v > 0:
    thin white limbs and rings)."""
    thick, radius, font = style_for(image)
    kp = np.asarray(keypoints, np.float64)
    shown = ((kp[:, 2] > 0) if ground_truth else (kp[:, 2] >= threshold)) \
        & np.isfinite(kp[:, :2]).all(1)                    # a NaN score or position: not drawn
    point = [(int(round(x)), int(round(y))) for x, y in np.nan_to_num(kp[:, :2]).clip(-1e5, 1e5)]
    colours = keypoint_colours(sides)
    for a, b in skeleton:
        if shown[a] and shown[b]:
            if ground_truth:
                cv2.line(image, point[a], point[b], HALO, thick + 2, cv2.LINE_AA)
                cv2.line(image, point[a], point[b], GROUND_TRUTH_COLOUR, thick, cv2.LINE_AA)
            else:
                cv2.line(image, point[a], point[b], SIDE_COLOURS[limb_side(sides, a, b)],
                         thick + 1, cv2.LINE_AA)
    for k in np.flatnonzero(shown):
        if ground_truth:
            cv2.circle(image, point[k], radius + 1, HALO, thick + 2, cv2.LINE_AA)
            cv2.circle(image, point[k], radius + 1, GROUND_TRUTH_COLOUR, thick, cv2.LINE_AA)
        else:
            cv2.circle(image, point[k], radius, colours[k], -1, cv2.LINE_AA)
            cv2.circle(image, point[k], radius, HALO, 1, cv2.LINE_AA)
    taken = [(p[0] - radius, p[1] - radius, 2 * radius, 2 * radius) for p in point]
    for k in np.flatnonzero(shown) if names is not None and not ground_truth else []:
        draw_label(image, names[k], point[k], radius + 1, 0.8 * font, taken)
    return image


def legend_strip(width, font, entries):
    """A white strip of (label, BGR colour, or None: the ground truth's ring) entries, each a
    dot and its label; they wrap onto more lines when the image is narrow."""
    h = text_size("Ag", font)[1] + 8
    lines, x = [[]], 4
    for label, colour in entries:
        w = h + text_size(label, font)[0] + h
        if x + w > width and lines[-1]:
            lines, x = lines + [[]], 4
        lines[-1].append((x, label, colour))
        x += w
    strip = np.full((h * len(lines), width, 3), 255, np.uint8)
    for row, line in enumerate(lines):
        y = row * h + h // 2
        for x, label, colour in line:
            if colour is None:  # ground truth: a white ring with a dark halo
                cv2.circle(strip, (x + h // 3, y), h // 4, HALO, 3, cv2.LINE_AA)
                cv2.circle(strip, (x + h // 3, y), h // 4, GROUND_TRUTH_COLOUR, 1, cv2.LINE_AA)
            else:
                cv2.circle(strip, (x + h // 3, y), h // 4, colour, -1, cv2.LINE_AA)
            put_text(strip, label, (x + h, row * h + 4), font)
    return strip


def overlay(image, predictions, skeleton, sides, threshold, ground_truth=(), names=None,
            legend=True, boxes=()):
    """Image (H, W, 3) BGR with the boxes [x, y, w, h], the predicted poses (each (K, 3)) over
    the ground-truth ones, `names` beside the predicted keypoints, a legend strip below ->
    (H + strip, W, 3) (legend=False: (H, W, 3), video)."""
    canvas, thick = image.copy(), style_for(image)[0]
    for x, y, w, h in (np.round(b).astype(int) for b in boxes):  # light, with a dark halo
        cv2.rectangle(canvas, (x, y), (x + w, y + h), HALO, thick + 2, cv2.LINE_AA)
        cv2.rectangle(canvas, (x, y), (x + w, y + h), BOX_COLOUR, thick, cv2.LINE_AA)
    for pose in ground_truth:
        draw_pose(canvas, pose, skeleton, sides, threshold, ground_truth=True)
    for pose in predictions:
        draw_pose(canvas, pose, skeleton, sides, threshold, names=names)
    if not legend:
        return canvas
    entries = [(f"prediction {side}", colour) for side, colour in SIDE_COLOURS.items()]
    entries += [("ground truth", None)] if len(ground_truth) else []
    strip = legend_strip(canvas.shape[1], style_for(canvas)[2], entries)
    return np.concatenate([canvas, strip], axis=0)


# ----------------------------------------------------------------------------- colour scale
def colourize(values, lo, hi):
    """(h, w) floats -> (h, w, 3) uint8 BGR (viridis), lo..hi mapped to the ends of the map."""
    scaled = np.clip((np.asarray(values, np.float64) - lo) / max(hi - lo, 1e-12), 0, 1)
    return cv2.applyColorMap(np.round(scaled * 255).astype(np.uint8), COLOURMAP)


def nice_ticks(lo, hi, count=5):
    """About `count` round tick values covering [lo, hi] (1, 2, 5 x 10^n steps)."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return [lo] if np.isfinite(lo) else []
    raw = (hi - lo) / max(count - 1, 1)
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def tick_label(value):
    return f"{value:.3g}" if value != 0 else "0"


def colour_bar(height, lo, hi, title, font=0.4):
    """A vertical colour bar for colourize(., lo, hi) with tick values and a rotated title."""
    bar_w, margin = 14, 6
    ticks = nice_ticks(lo, hi)
    label_w = max([text_size(tick_label(t), font)[0] for t in ticks] or [0])
    caption = vertical_text(title, font)
    x = margin + bar_w + 4 + label_w + margin                             # the caption's column
    canvas = np.full((height, x + caption.shape[1] + margin, 3), 255, np.uint8)
    top, bottom = margin, height - margin
    ramp = np.linspace(hi, lo, bottom - top)[:, None].repeat(bar_w, 1)   # top = hi
    paste(canvas, colourize(ramp, lo, hi), margin, top)
    cv2.rectangle(canvas, (margin, top), (margin + bar_w - 1, bottom - 1), (0, 0, 0), 1)
    for t in ticks:
        y = int(round(bottom - 1 - (t - lo) / max(hi - lo, 1e-12) * (bottom - top - 1)))
        cv2.line(canvas, (margin + bar_w, y), (margin + bar_w + 3, y), (0, 0, 0), 1)
        put_text(canvas, tick_label(t), (margin + bar_w + 5, y - text_size("0", font)[1] // 2),
                 font)
    paste(canvas, caption[:height], x, max(0, (height - caption.shape[0]) // 2))
    return canvas


def titled(image, title, font=0.5, caption=None):
    """Add a title strip above and caption lines below an image (widened to fit the text)."""
    lines = [caption] if isinstance(caption, str) else list(caption or [])
    w = max([image.shape[1], text_size(title, font)[0] + 12]
            + [text_size(line, 0.4)[0] + 12 for line in lines])
    parts = [np.full((text_size("Ag", font)[1] + 10, w, 3), 255, np.uint8)]
    put_text(parts[0], title, (6, 5), font)
    parts.append(np.pad(image, ((0, 0), (0, w - image.shape[1]), (0, 0)), constant_values=255))
    for line in lines:
        strip = np.full((text_size("Ag", 0.4)[1] + 6, w, 3), 255, np.uint8)
        put_text(strip, line, (6, 3), 0.4)
        parts.append(strip)
    return np.concatenate(parts, axis=0)


def tile_grid(tiles, columns):
    """Equal-sized tiles in rows of `columns` (fewer when there are fewer), white filling."""
    columns = min(columns, len(tiles))
    tiles = tiles + [np.full_like(tiles[0], 255)] * (-len(tiles) % columns)
    return np.concatenate([np.concatenate(tiles[i:i + columns], axis=1)
                           for i in range(0, len(tiles), columns)], axis=0)


def side_by_side(left, right):
    h = max(left.shape[0], right.shape[0])
    pad = [np.pad(x, ((0, h - x.shape[0]), (0, 0), (0, 0)), constant_values=255)
           for x in (left, right)]
    return np.concatenate(pad, axis=1)


# ----------------------------------------------------------------------------- paper figures
def unnormalize(image, normalize):
    """(3, H, W) normalised float tensor -> (H, W, 3) uint8 BGR for drawing."""
    mean, std = NORMALIZATION[normalize]
    rgb = image.permute(1, 2, 0).cpu().numpy() * np.asarray(std) + np.asarray(mean)
    return np.ascontiguousarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)[..., ::-1])


@torch.no_grad()
def paper_figures(model, item, heatmap_size, names, normalize, device):
    """Fig. 3 (pixel-level score maps S, Eq. 3) and Fig. 2 (semantic matching M, Eq. 7) of one
    dataset item; None for a figure the model has no input for (SimpleBaseline, no labels)."""
    crop = torch.as_tensor(item["image"])[None].to(device)                   # (1, 3, H, W)
    out = model(crop, return_extras=True)
    fig3 = fig2 = None
    if "score_map" in out:
        score_map = out["score_map"][0].float().cpu().numpy()                # (K, h0, w0)
        fig3 = score_map_figure(unnormalize(crop[0], normalize), score_map, names)
    visible = np.asarray(item["target_weight"]) > 0                          # (K,)
    if "dense" in out and visible.any():
        keypoints = torch.as_tensor(item["keypoints"])[None].to(device)     # (1, K, 2)
        features = sample_keypoint_features(out["dense"].float(), keypoints, heatmap_size)
        M = similarity_matrix(features, out["prompts"].float())[0]          # (K, K), Eq. 7
        fig2 = similarity_figure(M.cpu().numpy(), names, visible)
    return fig3, fig2


def score_map_figure(crop, score_map, names, columns=6):
    """Paper Fig. 3: crop (H, W, 3) BGR; score_map (K, h0, w0) = S of Eq. 3 (cosine similarity
    of each prompt embedding with every visual embedding). A tile per keypoint: the crop blended
    with S_n upsampled to it, under the keypoint's name; one colour scale (the bar) for all."""
    if crop.shape[1] < 160:  # small crops: enlarge so the tiles and their names stay readable
        factor = -(-160 // crop.shape[1])
        crop = cv2.resize(crop, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
    H, W = crop.shape[:2]
    lo, hi = float(np.min(score_map)), float(np.max(score_map))
    tiles = []
    for s, name in zip(score_map, names):
        heat = colourize(cv2.resize(np.asarray(s, np.float32), (W, H),
                                    interpolation=cv2.INTER_LINEAR), lo, hi)
        tile = cv2.addWeighted(crop, 0.45, heat, 0.55, 0)
        label = np.full((text_size("Ag", 0.4)[1] + 6, W, 3), 255, np.uint8)
        put_text(label, name, (3, 3), 0.4)
        tiles.append(np.pad(np.concatenate([label, tile]), ((0, 4), (0, 4), (0, 0)),
                            constant_values=255))
    grid = tile_grid(tiles, columns)
    figure = side_by_side(grid, colour_bar(grid.shape[0], lo, hi, "cosine similarity S_n(x, y)"))
    caption = (f"tiles: the input crop (x right, y down) blended with S_n, upsampled from "
               f"{score_map.shape[2]}x{score_map.shape[1]}")
    return titled(figure, "Pixel-level score maps S (Eq. 3): each keypoint's prompt vs every "
                  "image location", caption=caption)


def similarity_figure(similarity, names, visible, cell=26):
    """Paper Fig. 2: the semantic matching matrix M (Eq. 7, cosine, no temperature) between
    the keypoint features F_k grid-sampled at the ground truth (rows) and the prompt
    embeddings E_n (columns). similarity (K, K); visible (K,) bool: rows of keypoints that are
    not labeled or lie outside the crop have no feature and are drawn grey (masked)."""
    K, font = len(names), 0.38
    visible = np.asarray(visible, bool)
    values = np.asarray(similarity, np.float64)
    shown = values[visible] if visible.any() else np.zeros(1)
    lo, hi = float(shown.min()), float(shown.max())
    label_w = max(text_size(n, font)[0] for n in names) + 8
    y_title = vertical_text("keypoint feature F_k at the ground truth (rows)", 0.45)
    left, top = y_title.shape[1] + 6 + label_w, label_w
    rows_h = max(K * cell, y_title.shape[0])             # a few keypoints: room for the title
    body = np.full((top + rows_h + 1, left + K * cell + 1, 3), 255, np.uint8)
    paste(body, y_title, 2, top + (rows_h - y_title.shape[0]) // 2)
    cells = np.where(visible[:, None, None], colourize(values, lo, hi), np.uint8(MASKED_COLOUR))
    paste(body, cells.repeat(cell, 0).repeat(cell, 1), left, top)    # (K cell, K cell, 3)
    for i in range(K):
        x, y = left + i * cell, top + i * cell
        if not visible[i]:  # hatch masked rows
            right = left + K * cell - 1
            for u in range(left, right, 8):
                cv2.line(body, (u, y + cell - 1), (min(u + cell - 1, right), y), (160, 160, 160), 1)
        cv2.rectangle(body, (x, y), (x + cell - 1, y + cell - 1), (0, 0, 0), 1)  # the match
        put_text(body, names[i], (left - label_w + 2, y + cell // 2 - 6), font)
        column = vertical_text(names[i], font)
        paste(body, column[-top:], x + (cell - column.shape[1]) // 2,
              max(0, top - column.shape[0] - 4))
    x_text = "prompt embedding E_n (columns)"
    width = max(body.shape[1], left + text_size(x_text, 0.45)[0] + 6)   # few keypoints: the title
    body = np.pad(body, ((0, 0), (0, width - body.shape[1]), (0, 0)), constant_values=255)
    x_title = np.full((24, width, 3), 255, np.uint8)
    put_text(x_title, x_text, (left, 5), 0.45)
    figure = side_by_side(np.concatenate([body, x_title]),
                          colour_bar(body.shape[0], lo, hi, "cosine similarity M_kn"))
    notes = ["outlined: the matching pair (diagonal); a good model is brightest there"]
    if not visible.all():
        notes.append("grey hatched rows: keypoint not labeled or outside the crop, so no "
                     "feature is sampled (excluded from L_semantic, Eq. 8)")
    return titled(figure, "Semantic matching M (Eq. 7): keypoint features vs prompts",
                  caption=notes)


# ----------------------------------------------------------------------------- training curves
CURVES = [("loss", "L_total (Eq. 10)"), ("pred", "L_pred"), ("pixel", "L_pixel (Eq. 5)"),
          ("semantic", "L_semantic (Eq. 8)"), ("lr", "learning rate"), ("val_AP", "val AP"),
          ("val_PCK", "val PCK"), ("val_RMSE_px", "val RMSE (px)")]


def curve_panel(xs, series, title, size=(200, 320), xlabel="epoch", y_range=None, hline=None):
    """A line plot: title, axes with tick labels, each (ys, BGR colour) of `series` a line (NaN:
    a gap; dots when few points); y_range (lo, hi) or the data's; hline: a grey threshold line."""
    H, W = size
    panel = np.full((H, W, 3), 255, np.uint8)
    put_text(panel, title, (8, 4), 0.45)
    x0, y0, x1, y1 = 56, 24, W - 12, H - 30       # plot area
    values = np.concatenate([np.asarray(ys, np.float64) for ys, _ in series])
    lo, hi = y_range or (float(np.nanmin(values)), float(np.nanmax(values)))
    if hi - lo < 1e-12 * max(1.0, abs(hi)):            # constant: centre it, +-50% (or +-1)
        pad = 0.5 * abs(lo) if lo != 0 else 1.0
        lo, hi = lo - pad, hi + pad
    e0, e1 = float(min(xs)), float(max(xs))
    e1 = e1 if e1 > e0 else e0 + 1
    to_x = lambda x: int(x0 + (x - e0) / (e1 - e0) * (x1 - x0))  # noqa: E731
    to_y = lambda y: int(y1 - (y - lo) / (hi - lo) * (y1 - y0))  # noqa: E731
    cv2.rectangle(panel, (x0, y0), (x1, y1), (0, 0, 0), 1)
    for t in nice_ticks(lo, hi, 4):
        cv2.line(panel, (x0 - 3, to_y(t)), (x0, to_y(t)), (0, 0, 0), 1)
        label = tick_label(t)
        put_text(panel, label, (x0 - 5 - text_size(label, 0.35)[0], to_y(t) - 5), 0.35)
    for t in nice_ticks(e0, e1, 5):
        if float(t).is_integer():
            cv2.line(panel, (to_x(t), y1), (to_x(t), y1 + 3), (0, 0, 0), 1)
            put_text(panel, str(int(t)), (to_x(t) - 4, y1 + 5), 0.35)
    put_text(panel, xlabel, ((x0 + x1) // 2 - 16, H - 14), 0.35)
    if hline is not None and lo <= hline <= hi:
        cv2.line(panel, (x0, to_y(hline)), (x1, to_y(hline)), (150, 150, 150), 1)
    for ys, colour in series:
        points = [(to_x(x), to_y(y)) if np.isfinite(y) else None for x, y in zip(xs, ys)]
        cv2.polylines(panel, gapped_lines(points), False, colour, 2, cv2.LINE_AA)
        for p in points if len(points) <= 60 else []:
            if p is not None:
                cv2.circle(panel, p, 3, colour, -1, cv2.LINE_AA)
    return panel


def gapped_lines(points):
    """Points (x, y) or None -> int32 arrays of the runs between the Nones, for cv2.polylines."""
    runs = itertools.groupby(points, key=lambda p: p is None)
    return [np.array(list(run), np.int32) for gap, run in runs if not gap]


def plot_training_curves(records, path):
    """curves.png (atomic: refreshed at every evaluation) from log.jsonl records ({'epoch': e,
    'loss': ..., 'val_AP': ...}): a panel per CURVES quantity logged, but none for a loss term
    that is zero throughout (switched off)."""
    panels = []
    for key, title in CURVES:
        pts = [(r["epoch"], float(r[key])) for r in records
               if isinstance(r.get(key), (int, float)) and np.isfinite(r[key])]
        if pts and (key.startswith("val_") or any(y != 0 for _, y in pts)):
            xs, ys = zip(*pts)
            panels.append(curve_panel(xs, [(ys, CURVE_COLOUR)], title))
    if not panels:
        raise ValueError(f"no loss or metric values in the {len(records)} log record(s) to plot")
    grid = tile_grid(panels, 4)
    epochs = f"{len(records)} epoch{'s' if len(records) != 1 else ''} logged"
    write_image(path, titled(grid, f"Training curves ({epochs})", 0.55))
