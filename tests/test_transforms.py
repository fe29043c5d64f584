"""transforms.py: affine, flip and heatmap round trips, the MSRA target and Eq. 1's decoding
against hand-computed values, the box jitter; read_image's check for truncated JPEGs."""
import re

import cv2
import numpy as np
import pytest

import keypoints as KP
import transforms as T

K = len(KP.AP10K_KEYPOINTS)


def test_affine_points_round_trip_under_rotation_and_scale():
    rng = np.random.default_rng(0)
    for _ in range(20):
        center, scale = rng.uniform(50, 500, 2), rng.uniform(20, 400, 2)
        rot = rng.uniform(-80, 80)
        M = T.get_affine_transform(center, scale, rot, (192, 256))
        Minv = T.get_affine_transform(center, scale, rot, (192, 256), inv=True)
        pts = rng.uniform(0, 600, (30, 2))
        np.testing.assert_allclose(T.affine_points(T.affine_points(pts, M), Minv), pts, atol=1e-8)
        np.testing.assert_allclose(T.affine_points(center[None], M), [[128, 96]], atol=1e-8)
    # rotation sense: +90 deg turns the image counter-clockwise, like cv2.getRotationMatrix2D
    M = T.get_affine_transform((100, 100), (256, 256), 90, (256, 256))
    R = cv2.getRotationMatrix2D((100.0, 100.0), 90, 1.0)
    np.testing.assert_allclose(T.affine_points([[150, 100]], M) - 128, T.affine_points([[150, 100]], R) - 100,
                               atol=1e-8)


def test_affine_image_round_trip_crop_then_back():
    rng = np.random.default_rng(1)
    h, w = 300, 400
    image = cv2.resize(rng.uniform(0, 255, (12, 16)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    # a small bright blob whose crop position must follow affine_points
    yy, xx = np.mgrid[0:h, 0:w]
    p = np.array([231.3, 147.8])
    image = image * 0.3 + 600 * np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * 3.0 ** 2))
    center, scale, rot = np.array([210.0, 160.0]), np.array([150.0, 150.0]), 35.0
    M = T.get_affine_transform(center, scale, rot, (256, 256))
    crop = cv2.warpAffine(image, M, (256, 256), flags=cv2.INTER_LINEAR)
    blob = np.clip(crop - crop.max() * 0.5, 0, None)
    cy, cx = np.mgrid[0:256, 0:256]
    centroid = np.array([(blob * cx).sum(), (blob * cy).sum()]) / blob.sum()
    np.testing.assert_allclose(centroid, T.affine_points(p[None], M)[0], atol=0.15)
    Minv = T.get_affine_transform(center, scale, rot, (256, 256), inv=True)
    back = cv2.warpAffine(crop, Minv, (w, h), flags=cv2.INTER_LINEAR)
    covered = cv2.warpAffine(np.ones((256, 256), np.float32), Minv, (w, h), flags=cv2.INTER_NEAREST)
    inner = cv2.erode(covered, np.ones((5, 5))) > 0
    assert inner.sum() > 10000
    smooth = np.abs(back - image)[inner & (np.hypot(xx - p[0], yy - p[1]) > 12)]
    assert smooth.mean() < 0.5, smooth.mean()  # downsampled by 0.59 and back: smooth parts survive


def test_box_to_center_scale_fills_aspect_and_pads():
    c, s = T.box_to_center_scale([10, 20, 100, 40], aspect_ratio=1.0)
    np.testing.assert_allclose(c, [60, 40])
    np.testing.assert_allclose(s, [125, 125])
    c, s = T.box_to_center_scale([0, 0, 30, 90], aspect_ratio=0.75)
    np.testing.assert_allclose(s, [67.5 * 1.25, 90 * 1.25])


def test_flip_back_twice_is_identity_and_permutation_is_an_involution():
    rng = np.random.default_rng(2)
    perm = T.flip_permutation(K, KP.AP10K_FLIP_PAIRS)
    assert np.array_equal(perm[perm], np.arange(K)) and perm[0] == 1 and perm[2] == 2
    hm = rng.random((2, K, 5, 6))
    once = T.flip_back_heatmaps(hm, KP.AP10K_FLIP_PAIRS, shift=False)
    np.testing.assert_allclose(once[:, 0, :, 0], hm[:, 1, :, -1])  # left eye <- mirrored right eye
    np.testing.assert_allclose(T.flip_back_heatmaps(once, KP.AP10K_FLIP_PAIRS, shift=False), hm)


def test_encode_heatmaps_hand_computed_values():
    """Centre rounded to the nearest heatmap pixel, 13 x 13 window, exp(-d^2 / 8) inside."""
    target, weight = T.encode_heatmaps(np.array([[10.4, 20.6], [30.5, 40.49]]), np.ones(2), (64, 48))
    assert target.shape == (2, 64, 48) and target.dtype == np.float32 and weight.tolist() == [1, 1]
    t = target[0]                                     # centre (x, y) = (10, 21)
    assert t[21, 10] == 1.0 and t.max() == 1.0
    np.testing.assert_allclose(t[21, 16], np.exp(-36 / 8), rtol=1e-6)    # 6 px right: inside
    np.testing.assert_allclose(t[27, 4], np.exp(-72 / 8), rtol=1e-6)     # the window's corner
    np.testing.assert_allclose(t[22, 11], np.exp(-2 / 8), rtol=1e-6)
    assert t[21, 17] == 0 and t[28, 10] == 0 and t[14, 10] == 0           # 7 px away: outside
    assert (t > 0).sum() == 13 * 13
    assert target[1, 40, 31] == 1.0                   # 30.5 -> 31, 40.49 -> 40


def test_encode_heatmaps_weights_at_the_border():
    """Weight 1 while any of the 13 x 13 window touches the heatmap, 0 when it misses it."""
    h, w = 64, 48
    pts = np.array([[-5.0, 30], [-6.4, 30], [-6.6, 30], [-7.0, 30],       # left edge
                    [w - 1 + 6, 30], [w - 1 + 6.6, 30], [w - 1 + 7, 30],  # right edge
                    [20, -6.0], [20, -7.0], [20, h - 1 + 6], [20, h - 1 + 7],  # top, bottom
                    [20, 30], [20, 30]])
    labeled = np.array([1] * 12 + [0])
    target, weight = T.encode_heatmaps(pts, labeled, (h, w))
    np.testing.assert_array_equal(weight, [1, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0])
    np.testing.assert_allclose(target[0, 30, :2], np.exp(-np.array([25, 36]) / 8), rtol=1e-6)  # centre -5
    assert (target[0] > 0).sum() == 2 * 13
    np.testing.assert_allclose(target[1, 30, 0], np.exp(-36 / 8), rtol=1e-6)   # -6.4 -> -6: one column
    np.testing.assert_allclose(target[4, 30, w - 1], np.exp(-36 / 8), rtol=1e-6)
    np.testing.assert_allclose(target[9, h - 1, 20], np.exp(-36 / 8), rtol=1e-6)
    assert target[weight == 0].max() == 0              # no target without weight (unlabeled too)


def test_heatmap_encode_decode_round_trip():
    """Decoding the encoder's targets gives back the rounded centre: within half a heatmap pixel."""
    rng = np.random.default_rng(4)
    pts = rng.uniform(0, 63, (500, 2))
    target, _ = T.encode_heatmaps(pts, np.ones(500), (64, 64))
    coords, maxvals = T.decode_heatmaps(target[None])
    np.testing.assert_array_equal(coords[0], np.floor(pts + 0.5))   # symmetric peak: no quarter shift
    assert np.abs(coords[0] - pts).max() <= 0.5 and (maxvals == 1).all()


def test_decode_quarter_pixel_shift_and_edges():
    """The authors' rule: the shift only where 1 < x < w - 1 and 1 < y < h - 1 together."""
    hm = np.zeros((1, 5, 8, 8), np.float32)
    hm[0, 0, 4, 4], hm[0, 0, 4, 5], hm[0, 0, 3, 4] = 1.0, 0.5, 0.2   # right and up neighbours higher
    hm[0, 1, 4, 1], hm[0, 1, 4, 0] = 1.0, 0.3                          # column 1: no shift
    hm[0, 2, 7, 7] = 1.0                                               # corner: no neighbour pair
    hm[0, 3, 1, 4], hm[0, 3, 1, 5] = 1.0, 0.5                          # row 1: no shift on x either
    hm[0, 4, 2, 2], hm[0, 4, 2, 1], hm[0, 4, 3, 2] = 1.0, 0.5, 0.5     # (2, 2): both axes shift
    coords, maxvals = T.decode_heatmaps(hm)
    np.testing.assert_allclose(coords[0], [[4.25, 3.75], [1.0, 4.0], [7.0, 7.0], [4.0, 1.0],
                                           [1.75, 2.25]])
    np.testing.assert_allclose(maxvals[0], [1, 1, 1, 1, 1])


def test_heatmap_to_image_equals_inverse_affine():
    rng = np.random.default_rng(6)
    coords = rng.uniform(0, 64, (3, K, 2))
    center, scale = rng.uniform(100, 300, (3, 2)), rng.uniform(50, 200, (3, 2))
    out = T.heatmap_to_image(coords, center, scale, (48, 64))   # (h, w)
    for n in range(3):
        ref = T.affine_points(coords[n], T.get_affine_transform(center[n], scale[n], 0, (48, 64), inv=True))
        np.testing.assert_allclose(out[n], ref, atol=1e-9)
    np.testing.assert_allclose(T.heatmap_to_image([[[64, 48]]], [[0, 0]], [[128, 96]], (48, 64)), [[[64, 48]]])


def test_flip_test_shift_brings_flipped_heatmaps_back():
    x_in = np.array([[100.0, 80.0], [37.0, 201.0]])  # keypoints 0 and 1 (a flip pair) in a 256 crop
    flipped_in = np.stack([255 - x_in[::-1, 0], x_in[::-1, 1]], 1)  # mirror x, swap the pair
    target, _ = T.encode_heatmaps(flipped_in / 4, np.ones(2), (64, 64))
    back = T.flip_back_heatmaps(target[None], [(0, 1)], shift=True)
    coords, _ = T.decode_heatmaps(back)
    assert np.abs(coords[0] - x_in / 4).max() <= 0.5
    no_shift, _ = T.decode_heatmaps(T.flip_back_heatmaps(target[None], [(0, 1)], shift=False))
    assert np.abs(coords[0, :, 0] - x_in[:, 0] / 4).mean() < np.abs(no_shift[0, :, 0] - x_in[:, 0] / 4).mean()


def test_box_jitter_rate_and_range():
    rng = np.random.default_rng(0)
    center, wh = np.array([100.0, 50.0]), np.array([80.0, 40.0])
    moves = np.array([T.jitter_box_center(center, wh, rng) - center for _ in range(20000)])
    moved = (moves != 0).any(1)
    assert 0.29 < moved.mean() < 0.31                                  # probability 0.3
    rel = moves[moved] / wh                                            # in box widths / heights
    assert np.abs(rel).max() <= 0.2 and np.abs(rel).min(0).max() < 0.001  # up to +-0.2, uniform
    assert (np.abs(rel) > 0.19).mean() > 0.03 and np.abs(rel.mean(0)).max() < 0.01
    assert 0.095 < np.abs(rel).mean() < 0.105                          # E|U(-0.2, 0.2)| = 0.1


# --- read_image: truncated JPEGs are refused, bytes after the end-of-image marker are ignored ---

def jpeg_bytes(*params, shape=(96, 128), seed=0):
    """A noisy BGR image and its JPEG bytes (cv2.imencode with extra `params`)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur((rng.random((*shape, 3)) * 255).astype(np.uint8), (0, 0), 1.0)
    return img, cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90, *params])[1].tobytes()


def exif_with_thumbnail(thumbnail, orientation=6):
    """APP1 segment: EXIF with IFD0 (orientation) and IFD1 holding a JPEG thumbnail, as cameras
    write them; the thumbnail brings its own SOI, start-of-scan FFDA and EOI FFD9."""
    import struct
    ifd0 = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 26)
    ifd1 = struct.pack("<H", 3) + struct.pack("<HHIHH", 0x0103, 3, 1, 6, 0)
    ifd1 += struct.pack("<HHII", 0x0201, 4, 1, 68) + struct.pack("<HHII", 0x0202, 4, 1, len(thumbnail))
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd0 + ifd1 + struct.pack("<I", 0)
    assert len(tiff) == 68
    payload = b"Exif\x00\x00" + tiff + thumbnail
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def motion_trailer(kind):
    """Bytes a phone appends after a JPEG's EOI (a motion photo's MP4) that hold a start-of-scan
    FF DA with no FF D9 after it: the old check (no FFD9 after the last FFDA) refused these."""
    rng = np.random.default_rng(1)
    if kind == "mp4":
        noise = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes().replace(b"\xff\xd9", b"\xff\x00")
        return b"\x00\x00\x00\x18ftypmp42" + noise + b"\xff\xda" + b"\x11" * 100
    return b"\x00\x00\x00\x18ftypmp42" + jpeg_bytes(seed=2)[1][:-3000]   # a cut embedded JPEG


def old_check_refuses(data):
    sos = data.rfind(b"\xff\xda")
    return sos < 0 or data.find(b"\xff\xd9", sos) < 0


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def assert_refused_as_truncated(path):
    with pytest.raises(ValueError, match=rf"^truncated JPEG {re.escape(str(path))} in ann\.json$"):
        T.read_image(path, context=" in ann.json")


JPEG_KINDS = {"baseline": (), "progressive": (cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
              "restart": (cv2.IMWRITE_JPEG_RST_INTERVAL, 1)}


@pytest.mark.parametrize("kind", JPEG_KINDS)
@pytest.mark.parametrize("trailer", ["mp4", "jpeg"])
def test_read_image_ignores_a_motion_photo_trailer_after_the_end_of_image(tmp_path, kind, trailer):
    _, jpg = jpeg_bytes(*JPEG_KINDS[kind])
    data = jpg + motion_trailer(trailer)
    assert old_check_refuses(data) and not old_check_refuses(jpg)
    expected = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
    path = write(tmp_path, "x.MP.jpg", data)
    image, reduce = T.read_image(path)
    assert reduce == 1 and np.array_equal(image, expected)
    assert T.read_image(path, 2)[0].shape == (48, 64, 3)


@pytest.mark.parametrize("kind", JPEG_KINDS)
def test_read_image_refuses_truncated_jpegs(tmp_path, kind):
    """Cut in every scan (a progressive JPEG has several, with tables between them), just before
    each start-of-scan, inside the headers and just before the EOI: all refused."""
    _, jpg = jpeg_bytes(*JPEG_KINDS[kind])
    scans = [m.start() for m in re.finditer(b"\xff\xda", jpg)]
    assert len(scans) > 3 if kind == "progressive" else len(scans) == 1
    if kind == "restart":
        assert re.search(b"\xff[\xd0-\xd7]", jpg)
    cuts = [6, 30, len(jpg) // 2, len(jpg) - 2, len(jpg) - 1]
    cuts += scans + [s + 20 for s in scans] + [s + 300 for s in scans]
    for cut in sorted(set(cuts)):
        assert_refused_as_truncated(write(tmp_path, f"cut{cut}.jpg", jpg[:cut]))
    assert T.read_image(write(tmp_path, "whole.jpg", jpg))[0].shape == (96, 128, 3)


def test_read_image_skips_an_exif_thumbnail_and_applies_the_orientation(tmp_path):
    """The EXIF thumbnail (its own FFDA ... FFD9 inside APP1) is skipped with its segment: the
    file decodes, rotated by its EXIF orientation 6; cut in the main scan it is refused although
    the thumbnail's EOI follows its start-of-scan; with a motion-photo trailer it decodes."""
    _, jpg = jpeg_bytes()
    _, thumb = jpeg_bytes(shape=(24, 32), seed=3)
    data = jpg[:2] + exif_with_thumbnail(thumb) + jpg[2:]
    assert data.find(b"\xff\xda") < data.find(b"\xff\xd9") < len(thumb) + 200
    image, _ = T.read_image(write(tmp_path, "exif.jpg", data))
    stored, _ = T.read_image(tmp_path / "exif.jpg", orientation=False)
    assert image.shape == (128, 96, 3) and np.array_equal(image, np.rot90(stored, -1))
    assert np.array_equal(stored, cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR))
    main_scan = data.rfind(b"\xff\xda")
    assert_refused_as_truncated(write(tmp_path, "cut.jpg", data[:main_scan + 500]))
    assert_refused_as_truncated(write(tmp_path, "cut2.jpg", data[:len(data) - 2]))
    with_trailer = data + motion_trailer("mp4")
    assert np.array_equal(T.read_image(write(tmp_path, "motion.jpg", with_trailer))[0], image)


def test_read_image_decodes_restart_markers_and_fill_bytes(tmp_path):
    """Restart markers RSTn inside the scan and fill bytes FF before a marker are stepped over
    (the walk reaches the EOI: a motion-photo trailer after it is ignored)."""
    _, jpg = jpeg_bytes(cv2.IMWRITE_JPEG_RST_INTERVAL, 1)
    assert len(re.findall(b"\xff[\xd0-\xd7]", jpg)) > 10
    expected = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(T.read_image(write(tmp_path, "rst.jpg", jpg))[0], expected)
    sos = jpg.find(b"\xff\xda")
    filled = jpg[:sos] + b"\xff\xff\xff" + jpg[sos:-2] + b"\xff\xff\xff\xd9" + motion_trailer("mp4")
    assert np.array_equal(T.read_image(write(tmp_path, "fill.jpg", filled))[0], expected)


def test_read_image_falls_back_on_the_old_check_for_a_malformed_jpeg(tmp_path):
    """Stray bytes where a marker must be (libjpeg warns and decodes): the walk gives up and the
    old check (an FFD9 after the last FFDA) decides, so such a file decodes as before; cut in
    its scan it is still refused."""
    _, jpg = jpeg_bytes()
    sos = jpg.find(b"\xff\xda")
    data = jpg[:sos] + b"\x00\x17" + jpg[sos:]
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    assert T.read_image(write(tmp_path, "stray.jpg", data))[0].shape == (96, 128, 3)
    assert_refused_as_truncated(write(tmp_path, "stray_cut.jpg", data[:-500]))
    assert_refused_as_truncated(write(tmp_path, "no_scan.jpg", jpg[:sos] + b"\xff\xd9"))  # as before
