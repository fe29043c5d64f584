"""Top-down geometry in numpy: box -> crop, flips, heatmap targets, and the decoding of Eq. 1.

Conventions of every function below:
- Sizes are (H, W), height first; points, centres and scales are (x, y) / (w, h) vectors.
- Image pixel (i, j) has its centre at (x, y) = (i, j); a horizontal flip maps x -> W - 1 - x.
- A box is COCO [x, y, w, h] with centre (x + w/2, y + h/2); `scale` is the (w, h) in image
  pixels of the padded, aspect-ratio-filled box that is warped onto the network input.
- Heatmap coordinates: x_hm = x_in / stride, stride = input / heatmap size (4); heatmap pixel
  i has its centre at i and covers [i - 0.5, i + 0.5].
`TopDownTransform`: a record (image file, box) -> network input and targets, with augmentation.
"""
import re
import warnings

import cv2
import numpy as np

# Input normalisation, (mean, std) of RGB in 0..1: the authors use ImageNet's for every backbone.
NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}

# Training augmentation and targets (SimpleBaseline / mmpose AP-10K settings, the authors').
BOX_PADDING = 1.25            # box -> crop: filled to the input aspect ratio, then x1.25
BOX_JITTER_PROB = 0.3         # training box centre moves with probability 0.3 ...
BOX_JITTER = 0.4              # ... by 0.4 * (U(0, 1) - 0.5) * (w, h): up to +-0.2 w / h
FLIP_PROB = 0.5
HALF_BODY_PROB = 0.3
HALF_BODY_MIN_KEYPOINTS = 8   # half-body only when MORE than this many keypoints are labeled
HALF_BODY_PADDING = 1.5
SCALE_SIGMA = 0.5             # scale factor ~ N(1, 0.5) clipped to [0.5, 1.5]
ROT_SIGMA = 40.0              # rotation ~ N(0, 40) deg clipped to [-80, 80] ...
ROT_PROB = 0.6                # ... applied with probability 0.6
TARGET_SIGMA = 2.0            # Gaussian target sigma in heatmap pixels


def box_to_center_scale(box, aspect_ratio, padding=BOX_PADDING):
    """COCO box [x, y, w, h] -> center (2,) and scale (2,) = (w, h) of the padded box in pixels:
    the box enlarged (never shrunk) to `aspect_ratio` = input width / height, then x `padding`."""
    x, y, w, h = [float(v) for v in box[:4]]
    center = np.array([x + 0.5 * w, y + 0.5 * h])
    w, h = (w, w / aspect_ratio) if w > aspect_ratio * h else (h * aspect_ratio, h)
    return center, np.array([w, h]) * padding


def get_affine_transform(center, scale, rot_deg, output_size, inv=False):
    """(2, 3) affine taking image pixels to output pixels (or back with inv=True). The output,
    of size output_size = (H, W), shows the box of size `scale` (w, h) around `center`, rotated
    by `rot_deg` counter-clockwise as displayed (as cv2.getRotationMatrix2D):
        out = S R (p - center) + (W/2, H/2),   S = diag(W / scale_w, H / scale_h)."""
    H, W = output_size
    t = np.deg2rad(rot_deg)
    R = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    A = np.diag([W / scale[0], H / scale[1]]) @ R                  # (2, 2)
    M = np.eye(3)
    M[:2, :2] = A
    M[:2, 2] = np.array([W / 2.0, H / 2.0]) - A @ np.asarray(center, dtype=np.float64)
    return (np.linalg.inv(M) if inv else M)[:2].copy()


def affine_points(points, M):
    """Apply a (2, 3) affine to points (N, 2) -> (N, 2)."""
    return np.asarray(points, dtype=np.float64) @ M[:, :2].T + M[:, 2]


def flip_permutation(num_keypoints, flip_pairs):
    """perm (K,) with perm[a] = b and perm[b] = a for each pair: flipped[k] = original[perm[k]]."""
    perm = np.arange(num_keypoints)
    for a, b in flip_pairs:
        perm[a], perm[b] = b, a
    return perm


def flip_back_heatmaps(heatmaps, flip_pairs, shift=True):
    """Flip test: heatmaps (N, K, h, w) of mirrored crops -> the unmirrored frame (mirrored along
    w, left/right channels swapped). Mirroring the 256-wide input maps x_in to 255 - x_in, i.e.
    heatmap x to 63.75 - x, while mirroring the heatmap maps x to 63 - x: the flipped-back map
    sits (stride - 1) / stride = 0.75 px left of the truth. shift=True moves it one pixel right
    (the SimpleBaseline correction; column 0 keeps its value)."""
    perm = flip_permutation(heatmaps.shape[1], flip_pairs)
    out = np.ascontiguousarray(heatmaps[..., ::-1][:, perm])
    if shift:
        out[..., 1:] = out[..., :-1].copy()
    return out


def encode_heatmaps(keypoints_hm, labeled, heatmap_size, sigma=TARGET_SIGMA):
    """Gaussian targets (mmpose's TopDownGenerateTarget, MSRA): keypoints (K, 2) in heatmap
    pixels -> target (K, h, w) float32, weight (K,) float32; heatmap_size = (h, w). With the
    centre rounded to the nearest heatmap pixel, mu = floor(x + 0.5),
        target_k(x, y) = exp(-((x - mu_x)^2 + (y - mu_y)^2) / (2 sigma^2))
    inside the window |x - mu_x| <= r, |y - mu_y| <= r, r = int(3 sigma) (13 x 13 for sigma 2),
    0 outside it (peak 1, unnormalised). weight_k = 0 (and target 0) for unlabeled keypoints and
    when the window misses the heatmap entirely; a window partly inside keeps weight 1. Unlike
    mmpose (only for keypoints more than half a pixel left of / above the heatmap): its
    int(x + 0.5) truncates toward zero (centre one pixel further right / down), and its test
    `br < 0` keeps weight 1, all-zero target, for a window ending 1 px before column / row 0."""
    h, w = heatmap_size
    mu = np.floor(np.asarray(keypoints_hm, dtype=np.float64) + 0.5).astype(np.int64)  # (K, 2)
    r = int(3 * sigma)
    reaches = ((mu[:, 0] + r >= 0) & (mu[:, 0] - r <= w - 1)
               & (mu[:, 1] + r >= 0) & (mu[:, 1] - r <= h - 1))
    weight = (np.asarray(labeled) > 0) & reaches                                   # (K,)
    dx = (np.arange(w)[None] - mu[:, :1]).astype(np.float32)                       # (K, w)
    dy = (np.arange(h)[None] - mu[:, 1:]).astype(np.float32)                       # (K, h)
    gx = np.where(np.abs(dx) <= r, np.exp(-dx ** 2 / np.float32(2 * sigma ** 2)), 0)
    gy = np.where(np.abs(dy) <= r, np.exp(-dy ** 2 / np.float32(2 * sigma ** 2)), 0)
    target = gy[:, :, None] * gx[:, None, :] * weight[:, None, None]               # (K, h, w)
    return target.astype(np.float32), weight.astype(np.float32)


def decode_heatmaps(heatmaps):
    """heatmaps (N, K, h, w) -> coords (N, K, 2) in heatmap pixels, maxvals (N, K): argmax,
    then a quarter-pixel step toward the higher neighbour on each axis, only where 1 < x < w - 1
    and 1 < y < h - 1 together: the authors' rule (mmpose), under which the published AP was
    computed (it leaves columns / rows 0, 1 and the last one unshifted)."""
    N, K, h, w = heatmaps.shape
    flat = heatmaps.reshape(N, K, h * w)
    idx = flat.argmax(axis=2)                                   # (N, K)
    maxvals = np.take_along_axis(flat, idx[..., None], 2)[..., 0]
    x, y = idx % w, idx // w

    def at(xx, yy):
        pos = np.clip(yy, 0, h - 1) * w + np.clip(xx, 0, w - 1)
        return np.take_along_axis(flat, pos[..., None], 2)[..., 0]

    inside = (x > 1) & (x < w - 1) & (y > 1) & (y < h - 1)
    dx = np.where(inside, np.sign(at(x + 1, y) - at(x - 1, y)), 0) * 0.25
    dy = np.where(inside, np.sign(at(x, y + 1) - at(x, y - 1)), 0) * 0.25
    return np.stack([x + dx, y + dy], axis=-1).astype(np.float32), maxvals  # (N, K, 2), (N, K)


def heatmap_to_image(coords, center, scale, heatmap_size):
    """Heatmap coords (N, K, 2) -> image coords (N, K, 2) for crops with rotation 0; equals
    affine_points(coords[n], get_affine_transform(center[n], scale[n], 0, heatmap_size (h, w),
    inv=True)): x_img = x_hm * scale_w / w + center_x - scale_w / 2."""
    center = np.asarray(center, dtype=np.float64).reshape(-1, 1, 2)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1, 1, 2)
    size = np.array([heatmap_size[1], heatmap_size[0]], dtype=np.float64)  # (w, h)
    return np.asarray(coords, dtype=np.float64) * scale / size + center - scale / 2


def keypoints_from_heatmaps(heatmaps, center, scale):
    """Eq. 1: the keypoint is the heatmap's maximum, mapped back to the image. heatmaps
    (B, K, h, w) of crops (center, scale (B, 2)) -> (B, K, 3) [x, y, maxval] in image pixels."""
    coords, maxvals = decode_heatmaps(heatmaps)                  # (B, K, 2), (B, K)
    points = heatmap_to_image(coords, center, scale, heatmaps.shape[2:])   # (B, K, 2)
    return np.concatenate([points, maxvals[..., None]], axis=2)


def jitter_box_center(center, box_wh, rng):
    """Training box jitter (the authors' `_xywh2cs`): with probability 0.3 the centre moves by
    0.4 * (u - 0.5) * (w, h) of the box, u ~ U(0, 1) per axis; the scale stays. Drawn for every
    sample here; the authors draw it once at loading (one jittered box per instance, all epochs)."""
    if rng.random() < BOX_JITTER_PROB:
        return center + BOX_JITTER * (rng.random(2) - 0.5) * np.asarray(box_wh, dtype=np.float64)
    return center


def half_body_box(keypoints, labeled, upper_ids, aspect_ratio, rng):
    """Half-body augmentation: center, scale of the upper or lower body (fair coin), or None.
    Upper: the labeled keypoints in upper_ids, lower: the other labeled ones (mmpose's rule); the
    other half if the chosen has <= 2 points. Box: their extent filled to the aspect ratio, x1.5."""
    upper = [i for i in range(len(labeled)) if labeled[i] and i in upper_ids]
    lower = [i for i in range(len(labeled)) if labeled[i] and i not in upper_ids]
    chosen = upper if (rng.random() < 0.5 and len(upper) > 2) else (lower if len(lower) > 2 else upper)
    if len(chosen) < 2:
        return None
    pts = keypoints[chosen, :2]
    extent = [*pts.min(0), *(pts.max(0) - pts.min(0))]   # their box [x, y, w, h]
    return pts.mean(0), box_to_center_scale(extent, aspect_ratio, HALF_BODY_PADDING)[1]


# the end of a scan's entropy-coded data: a marker, i.e. FF not followed by a stuffed 00, a
# restart marker RSTn (D0-D7, inside the scan) or a fill byte FF
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _jpeg_truncated(data):
    """Whether JPEG bytes `data` (starting with SOI FFD8) end before the main image's end-of-image
    marker FFD9. Walks the marker segments from the start: a segment with a 2-byte length is
    skipped whole (an EXIF thumbnail in APP1 too), standalone markers (RSTn, TEM) and fill bytes
    FF are stepped over, and a start-of-scan's entropy-coded data runs to the next marker (a
    progressive JPEG has several scans with tables between them). Bytes after the EOI (the video
    of a phone's motion photo, ...) are ignored. If the walk meets something unexpected, it falls
    back on a heuristic: no FFD9 after the last start-of-scan FFDA."""
    n, pos, scans = len(data), 2, 0
    while True:
        if pos + 1 >= n:
            return True                          # ends where a marker must be
        if data[pos] != 0xFF:
            break                                # no marker where one must be
        marker = data[pos + 1]
        if marker == 0xFF:                       # fill byte
            pos += 1
        elif marker == 0xD9:                     # EOI
            if scans:
                return False
            break                                # EOI before any scan
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2                             # RSTn, TEM: no length
        elif marker < 0xC0 or marker == 0xD8:
            break                                # reserved, stuffed 00 or a second SOI
        else:
            if pos + 4 > n:
                return True
            length = data[pos + 2] << 8 | data[pos + 3]
            if length < 2:
                break
            pos += 2 + length
            if marker == 0xDA:                   # start of scan: entropy-coded data follows
                scans += 1
                end = _JPEG_SCAN_END.search(data, pos)
                if end is None:
                    return True
                pos = end.start()
    sos = data.rfind(b"\xff\xda")
    return sos < 0 or data.find(b"\xff\xd9", sos) < 0


def read_image(path, reduce=1, context="", orientation=True):
    """Decode an image file -> (uint8 BGR (H, W, 3), reduction used). Grey, RGBA (alpha dropped),
    palette and 16-bit images become 8-bit colour. The EXIF orientation is applied, as the
    authors' decoder does (orientation=False: the stored pixels). reduce in (1, 2, 4, 8) decodes
    a JPEG at 1/reduce size by libjpeg's DCT scaling (other formats: full size); reduced pixel x
    covers original pixels [r x, r x + r - 1], so its centre is r x + (r - 1) / 2."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FileNotFoundError(f"cannot read image {path}{context}: {e.strerror}") from e
    if not data:
        raise ValueError(f"image file {path} is empty (0 bytes){context}")
    is_jpeg = data[:2] == b"\xff\xd8"
    if is_jpeg and _jpeg_truncated(data):   # libjpeg would fill the missing part grey
        raise ValueError(f"truncated JPEG {path}{context}")
    reduce = reduce if is_jpeg else 1
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}[reduce]
    flags |= 0 if orientation else cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise ValueError(f"cannot decode image {path}{context} ({len(data)} bytes)")
    return image, reduce


class TopDownTransform:
    """Record -> network input and targets: one bilinear warp of the (augmented) box onto the
    (H, W) input, normalisation, and Gaussian targets at the (h, w) heatmap."""

    def __init__(self, image_size, heatmap_size, normalize, flip_pairs, upper_body, flip,
                 reduced_decode=False):
        if normalize not in NORMALIZATION:
            raise ValueError(f"normalize must be one of {sorted(NORMALIZATION)}, got {normalize!r}")
        for name, size in (("image_size", image_size), ("heatmap_size", heatmap_size)):
            if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
                raise ValueError(f"{name} must be (H, W), two positive integers, got {size!r}")
        self.image_size = tuple(int(v) for v in image_size)       # (H, W)
        self.heatmap_size = tuple(int(v) for v in heatmap_size)   # (h, w)
        self.aspect_ratio = self.image_size[1] / self.image_size[0]   # W / H
        mean, std = NORMALIZATION[normalize]
        self._scale = (1.0 / (np.array(std) * 255)).astype(np.float32)  # RGB: (x / 255 - mean) / std
        self._offset = (np.array(mean) / np.array(std)).astype(np.float32)
        self.flip_pairs, self.upper_body, self.flip = flip_pairs, upper_body, flip
        self.reduced_decode = reduced_decode
        self.stored_frame = set()  # images whose json size is that of the unrotated pixels

    def random_augmentation(self, rec, rng):
        """Training augmentation (center, scale, rot_deg, flip) for one record, in mmpose's order:
        box jitter, half-body, scale, rotation, flip."""
        center, scale = jitter_box_center(rec["center"], rec["box"][2:], rng), rec["scale"]
        labeled = rec["keypoints"][:, 2] > 0
        if (self.upper_body is not None and labeled.sum() > HALF_BODY_MIN_KEYPOINTS
                and rng.random() < HALF_BODY_PROB):
            half = half_body_box(rec["keypoints"], labeled, self.upper_body, self.aspect_ratio, rng)
            if half is not None:
                center, scale = half
        scale = scale * np.clip(rng.normal(1.0, SCALE_SIGMA), 1 - SCALE_SIGMA, 1 + SCALE_SIGMA)
        rot = 0.0
        if rng.random() < ROT_PROB:
            rot = float(np.clip(rng.normal(0.0, ROT_SIGMA), -2 * ROT_SIGMA, 2 * ROT_SIGMA))
        return center, scale, rot, bool(rng.random() < FLIP_PROB) and self.flip

    def warp_image(self, rec, M, scale, context):
        """The record's image through the (3, 3) affine M -> (3, H, W) normalised RGB float32,
        at full resolution, EXIF orientation applied, as the authors decode. reduced_decode:
        a JPEG at 1/2, 1/4 or 1/8 resolution when the crop still gets at least one source
        pixel per output pixel (faster; changes the input). A json size that only the
        unrotated pixels have means the labels are in that frame: it is used, and said."""
        H, W = self.image_size
        fits = [r for r in (2, 4, 8) if r <= min(scale[0] / W, scale[1] / H)]
        reduce = max(fits, default=1) if self.reduced_decode else 1
        path, json_size = rec["path"], (rec["image_height"], rec["image_width"])
        expect = tuple(-(-v // reduce) for v in json_size)  # ceil: libjpeg's reduced size
        source, reduce = read_image(path, reduce, context, path not in self.stored_frame)
        if source.shape[:2] != expect and path not in self.stored_frame:
            stored = read_image(path, reduce, context, orientation=False)[0]
            if stored.shape[:2] == expect:
                warnings.warn(f"image {path}: the json gives the size of its stored pixels, not of "
                              f"the EXIF-rotated picture: the labels are taken in the stored frame")
                self.stored_frame.add(path)
                source = stored
        if source.shape[:2] != expect:
            raise ValueError(f"image {path} is {source.shape[1]}x{source.shape[0]} at 1/{reduce} "
                             f"but the json says {rec['image_width']}x{rec['image_height']}{context}")
        S = np.array([[reduce, 0, (reduce - 1) / 2], [0, reduce, (reduce - 1) / 2], [0, 0, 1.0]])  # reduced -> full px
        return self.crop(source, M @ S)

    def crop(self, source, M):
        """A BGR uint8 image through the (3, 3) affine M -> (3, H, W) normalised RGB float32."""
        H, W = self.image_size
        crop = cv2.warpAffine(source, M[:2], (W, H), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        image = np.empty((3, H, W), np.float32)                   # (3, H, W) RGB, normalised
        for c, channel in enumerate(cv2.split(crop)[::-1]):        # BGR -> RGB, contiguous planes
            np.multiply(channel, self._scale[c], out=image[c])
            image[c] -= self._offset[c]
        return image

    def __call__(self, rec, center=None, scale=None, rot_deg=0.0, flip=False, context=""):
        """One sample with explicit augmentation (defaults: the record's box, no rotation/flip):
        flip mirrors the crop (x_in -> W - 1 - x_in) and swaps left/right keypoints, in the warp."""
        center = rec["center"] if center is None else np.asarray(center, dtype=np.float64)
        scale = rec["scale"] if scale is None else np.asarray(scale, dtype=np.float64)
        (H, W), (h, w) = self.image_size, self.heatmap_size
        M = np.vstack([get_affine_transform(center, scale, rot_deg, self.image_size), [0, 0, 1]])
        if flip:
            M = np.array([[-1.0, 0, W - 1], [0, 1, 0], [0, 0, 1]]) @ M
        image = self.warp_image(rec, M, scale, context)
        kps = rec["keypoints"]
        xy, labeled = affine_points(kps[:, :2], M[:2]), kps[:, 2] > 0
        if flip:
            perm = flip_permutation(len(kps), self.flip_pairs)
            xy, labeled = xy[perm], labeled[perm]
        xy_hm = np.where(labeled[:, None], xy / np.array([W / w, H / h]), 0.0).astype(np.float32)
        target, weight = encode_heatmaps(xy_hm, labeled, self.heatmap_size)
        return {
            "image": image,                                            # (3, H, W) float32
            "target": target,                                          # (K, h, w)
            "target_weight": weight,                                   # (K,)
            "keypoints": xy_hm,                                        # (K, 2) heatmap px; 0 where unlabeled
            "image_id": rec["image_id"], "ann_id": rec["ann_id"], "category_id": rec["category_id"],
            "center": center.astype(np.float32), "scale": scale.astype(np.float32),
            "bbox_score": np.float32(rec["bbox_score"]), "detection": rec["detection"],
        }
