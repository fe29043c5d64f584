"""Tests for dataset.py: geometry round trips, flips, heatmaps, bad input, few-shot, loading."""
import json
import os
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dataset as D  # noqa: E402

K = len(D.AP10K_KEYPOINTS)
COLOURS = [(int(c[0]), int(c[1]), int(c[2])) for c in
           np.random.default_rng(5).integers(40, 256, (K, 3))]  # BGR, one per keypoint


# ---------------------------------------------------------------- helpers

def category(cid=1, name="dog", family="Canidae", keypoints=D.AP10K_KEYPOINTS):
    return {"supercategory": family, "id": cid, "name": name, "keypoints": list(keypoints),
            "skeleton": D.AP10K_SKELETON}


def keypoints_for(box, rng, labeled=K):
    """Keypoints on a jittered 6 x 3 grid inside the box (apart, so their dots never overlap)."""
    x, y, w, h = box
    kps = np.zeros((K, 3))
    cells = rng.permutation(18)[:K]
    kps[:, 0] = x + w * (0.1 + 0.8 * (cells % 6) / 5) + rng.uniform(-1, 1, K)
    kps[:, 1] = y + h * (0.1 + 0.8 * (cells // 6) / 2) + rng.uniform(-1, 1, K)
    kps[:labeled, 2] = 2
    kps[labeled:, :2] = 0
    return kps


def annotation(aid, image_id, box, kps, category_id=1, **extra):
    ann = {"id": aid, "image_id": image_id, "category_id": category_id, "bbox": list(map(float, box)),
           "area": float(box[2] * box[3]), "iscrowd": 0, "num_keypoints": int((kps[:, 2] > 0).sum()),
           "keypoints": [round(float(v), 3) for v in kps.ravel()]}
    ann.update(extra)
    return ann


def dot_image(w, h, kps, background=90):
    """Image with a coloured 7x7 square centred on each labeled keypoint (BGR)."""
    img = np.full((h, w, 3), background, np.uint8)
    for k, (x, y, v) in enumerate(kps):
        if v > 0:
            xi, yi = int(round(x)), int(round(y))
            img[max(yi - 3, 0):yi + 4, max(xi - 3, 0):xi + 4] = COLOURS[k]
    return img


def write_dataset(tmp_path, images, annotations, categories=None, name="ann.json"):
    """images: list of (id, file_name, width, height, array-or-None); writes json + image files."""
    os.makedirs(tmp_path / "img", exist_ok=True)
    for _, fname, _, _, arr in images:
        if arr is not None:
            cv2.imwrite(str(tmp_path / "img" / fname), arr)
    data = {"images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, w, h, _ in images],
            "annotations": annotations, "categories": categories or [category()]}
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=1))
    return str(path), str(tmp_path / "img")


def one_instance_dataset(tmp_path, w=320, h=240, box=(60, 40, 160, 120), ext="png", seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    kps = keypoints_for(box, rng)
    ann_file, img_dir = write_dataset(tmp_path, [(1, f"a.{ext}", w, h, dot_image(w, h, kps))],
                                      [annotation(7, 1, box, kps)])
    return D.KeypointDataset(ann_file, img_dir, train=False, **kwargs), kps


def denormalise(item_image, mean=D.CLIP_MEAN, std=D.CLIP_STD):
    """(3, H, W) normalised RGB -> (H, W, 3) BGR float in 0..255."""
    rgb = item_image.transpose(1, 2, 0) * np.array(std) * 255 + np.array(mean) * 255
    return rgb[:, :, ::-1]


# ---------------------------------------------------------------- geometry

def test_affine_points_round_trip_under_rotation_and_scale():
    rng = np.random.default_rng(0)
    for _ in range(20):
        center, scale = rng.uniform(50, 500, 2), rng.uniform(20, 400, 2)
        rot = rng.uniform(-80, 80)
        M = D.get_affine_transform(center, scale, rot, (256, 192))
        Minv = D.get_affine_transform(center, scale, rot, (256, 192), inv=True)
        pts = rng.uniform(0, 600, (30, 2))
        np.testing.assert_allclose(D.affine_points(D.affine_points(pts, M), Minv), pts, atol=1e-8)
        np.testing.assert_allclose(D.affine_points(center[None], M), [[128, 96]], atol=1e-8)
    # rotation sense: +90 deg turns the image counter-clockwise, like cv2.getRotationMatrix2D
    M = D.get_affine_transform((100, 100), (256, 256), 90, (256, 256))
    R = cv2.getRotationMatrix2D((100.0, 100.0), 90, 1.0)
    np.testing.assert_allclose(D.affine_points([[150, 100]], M) - 128, D.affine_points([[150, 100]], R) - 100,
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
    M = D.get_affine_transform(center, scale, rot, (256, 256))
    crop = cv2.warpAffine(image, M, (256, 256), flags=cv2.INTER_LINEAR)
    blob = np.clip(crop - crop.max() * 0.5, 0, None)
    cy, cx = np.mgrid[0:256, 0:256]
    centroid = np.array([(blob * cx).sum(), (blob * cy).sum()]) / blob.sum()
    np.testing.assert_allclose(centroid, D.affine_points(p[None], M)[0], atol=0.15)
    Minv = D.get_affine_transform(center, scale, rot, (256, 256), inv=True)
    back = cv2.warpAffine(crop, Minv, (w, h), flags=cv2.INTER_LINEAR)
    covered = cv2.warpAffine(np.ones((256, 256), np.float32), Minv, (w, h), flags=cv2.INTER_NEAREST)
    inner = cv2.erode(covered, np.ones((5, 5))) > 0
    assert inner.sum() > 10000
    smooth = np.abs(back - image)[inner & (np.hypot(xx - p[0], yy - p[1]) > 12)]
    assert smooth.mean() < 0.5, smooth.mean()  # downsampled by 0.59 and back: smooth parts survive


def test_box_to_center_scale_fills_aspect_and_pads():
    c, s = D.box_to_center_scale([10, 20, 100, 40], aspect_ratio=1.0)
    np.testing.assert_allclose(c, [60, 40])
    np.testing.assert_allclose(s, [125, 125])
    c, s = D.box_to_center_scale([0, 0, 30, 90], aspect_ratio=0.75)
    np.testing.assert_allclose(s, [67.5 * 1.25, 90 * 1.25])


def test_flip_twice_is_identity():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 255, (7, 9, 3), dtype=np.uint8)
    assert np.array_equal(D.flip_image(D.flip_image(img)), img)
    assert np.array_equal(D.flip_image(img)[:, 0], img[:, -1])
    kps = rng.uniform(0, 9, (4, K, 3))
    once = D.flip_keypoints(kps, 9, D.AP10K_FLIP_PAIRS)
    np.testing.assert_allclose(D.flip_keypoints(once, 9, D.AP10K_FLIP_PAIRS), kps)
    np.testing.assert_allclose(once[:, 0, 0], 8 - kps[:, 1, 0])  # left_eye <- mirrored right_eye
    np.testing.assert_allclose(once[:, 2, 0], 8 - kps[:, 2, 0])  # nose stays nose
    hm = rng.random((2, K, 5, 6))
    np.testing.assert_allclose(D.flip_back_heatmaps(D.flip_back_heatmaps(hm, D.AP10K_FLIP_PAIRS, shift=False),
                                                    D.AP10K_FLIP_PAIRS, shift=False), hm)


def test_flipped_keypoints_land_on_flipped_image_pixels():
    rng = np.random.default_rng(3)
    kps = keypoints_for((20, 15, 80, 60), rng)
    img = dot_image(120, 90, kps)
    fimg, fkps = D.flip_image(img), D.flip_keypoints(kps, 120, D.AP10K_FLIP_PAIRS)
    perm = D.flip_permutation(K, D.AP10K_FLIP_PAIRS)
    for k in range(K):
        x, y = int(round(fkps[k, 0])), int(round(fkps[k, 1]))
        assert tuple(fimg[y, x]) == COLOURS[perm[k]]  # left_eye of the mirror is the right eye's dot


def test_dataset_flip_sample_matches_mirrored_crop(tmp_path):
    ds, _ = one_instance_dataset(tmp_path)
    plain, flipped = ds.make_sample(0, rot_deg=20), ds.make_sample(0, rot_deg=20, flip=True)
    np.testing.assert_allclose(flipped["image"], plain["image"][:, :, ::-1], atol=1e-4)
    perm = D.flip_permutation(K, ds.flip_pairs)
    x_in = plain["keypoints"] * 4
    fx_in = flipped["keypoints"] * 4
    np.testing.assert_allclose(fx_in[:, 0], 255 - x_in[perm, 0], atol=1e-4)
    np.testing.assert_allclose(fx_in[:, 1], x_in[perm, 1], atol=1e-4)
    np.testing.assert_array_equal(flipped["target_weight"], plain["target_weight"][perm])
    crop = denormalise(flipped["image"])
    for k in range(K):
        if flipped["target_weight"][k]:
            x, y = np.round(fx_in[k]).astype(int)
            np.testing.assert_allclose(crop[y, x], COLOURS[perm[k]], atol=3)  # the partner's dot


def test_derive_flip_pairs_reproduces_known_pairs():
    assert D.derive_flip_pairs(D.AP10K_KEYPOINTS) == D.AP10K_FLIP_PAIRS
    assert D.derive_flip_pairs(D.COCO_KEYPOINTS) == D.COCO_FLIP_PAIRS
    assert D.derive_flip_pairs(["Left Wing", "right wing", "beak", "left-foot", "right-foot"]) == [(0, 1), (3, 4)]


# ---------------------------------------------------------------- heatmaps

def test_heatmap_encode_decode_round_trip():
    rng = np.random.default_rng(4)
    # points the quarter-pixel decoder can represent (x_hm in j + {-0.25, 0, 0.25}): < 0.5 px in input space
    lattice = rng.integers(2, 62, (K, 2)) + rng.choice([-0.25, 0.0, 0.25], (K, 2))
    target, weight = D.encode_heatmaps(lattice, np.ones(K), (64, 64), 2.0)
    assert weight.all() and np.isclose(target.max(), 1.0)
    coords, maxvals = D.decode_heatmaps(target[None])
    assert np.abs(coords[0] - lattice).max() * 4 < 0.5
    # arbitrary sub-pixel points: the decoder's resolution is a quarter heatmap pixel (1 input px)
    pts = rng.uniform(1, 62, (500, 2))
    target, _ = D.encode_heatmaps(pts, np.ones(500), (64, 64), 2.0)
    coords, _ = D.decode_heatmaps(target[None])
    err = np.abs(coords[0] - pts) * 4
    assert err.max() <= 1.0 + 1e-4 and err.mean() < 0.55
    argmax_only = np.abs(np.round(pts) - pts) * 4
    assert err.mean() < argmax_only.mean()


def test_encode_heatmaps_zero_weight_for_unlabeled_and_outside():
    pts = np.array([[10.0, 10.0], [10.0, 10.0], [-0.6, 5.0], [63.6, 5], [5, 64.0], [63.4, 63.4]])
    target, weight = D.encode_heatmaps(pts, np.array([1, 0, 1, 1, 1, 1]), (64, 64), 2.0)
    np.testing.assert_array_equal(weight, [1, 0, 0, 0, 0, 1])
    assert target[1].max() == 0 and target[2].max() == 0 and target.dtype == np.float32
    assert np.unravel_index(target[0].argmax(), (64, 64)) == (10, 10)


def test_decode_quarter_pixel_shift_and_edges():
    hm = np.zeros((1, 3, 8, 8), np.float32)
    hm[0, 0, 4, 4], hm[0, 0, 4, 5], hm[0, 0, 3, 4] = 1.0, 0.5, 0.2   # right and up neighbours higher
    hm[0, 1, 0, 1], hm[0, 1, 0, 0] = 1.0, 0.3                          # column 1 still gets its shift
    hm[0, 2, 7, 7] = 1.0                                               # corner: no neighbour pair
    coords, maxvals = D.decode_heatmaps(hm)
    np.testing.assert_allclose(coords[0], [[4.25, 3.75], [0.75, 0.0], [7.0, 7.0]])
    np.testing.assert_allclose(maxvals[0], [1, 1, 1])


def test_heatmap_to_image_equals_inverse_affine():
    rng = np.random.default_rng(6)
    coords = rng.uniform(0, 64, (3, K, 2))
    center, scale = rng.uniform(100, 300, (3, 2)), rng.uniform(50, 200, (3, 2))
    out = D.heatmap_to_image(coords, center, scale, (64, 48))
    for n in range(3):
        ref = D.affine_points(coords[n], D.get_affine_transform(center[n], scale[n], 0, (64, 48), inv=True))
        np.testing.assert_allclose(out[n], ref, atol=1e-9)


def test_image_keypoints_through_targets_and_back(tmp_path):
    """Image keypoints -> crop -> Gaussian targets -> decode -> image: within the decoder's resolution."""
    ds, kps = one_instance_dataset(tmp_path)
    item = ds[0]
    coords, _ = D.decode_heatmaps(item["target"][None])
    back = D.heatmap_to_image(coords, item["center"][None], item["scale"][None], ds.heatmap_size)[0]
    px_per_hm = item["scale"][0] / ds.heatmap_size[0]
    assert np.abs(back - kps[:, :2]).max() <= 0.25 * px_per_hm + 1e-3


def test_flip_test_shift_brings_flipped_heatmaps_back():
    x_in = np.array([[100.0, 80.0], [37.0, 201.0]])  # keypoints 0 and 1 (a flip pair) in a 256 crop
    flipped_in = D.flip_keypoints(np.hstack([x_in, np.ones((2, 1))]), 256, [(0, 1)])[:, :2]
    target, _ = D.encode_heatmaps(flipped_in / 4, np.ones(2), (64, 64), 2.0)
    back = D.flip_back_heatmaps(target[None], [(0, 1)], shift=True)
    coords, _ = D.decode_heatmaps(back)
    assert np.abs(coords[0] - x_in / 4).max() <= 0.5
    no_shift, _ = D.decode_heatmaps(D.flip_back_heatmaps(target[None], [(0, 1)], shift=False))
    assert np.abs(coords[0, :, 0] - x_in[:, 0] / 4).mean() < np.abs(no_shift[0, :, 0] - x_in[:, 0] / 4).mean()


# ---------------------------------------------------------------- dataset items and augmentation

def test_item_keys_dtypes_and_default_collate(tmp_path):
    ds, _ = one_instance_dataset(tmp_path, mean=D.IMAGENET_MEAN, std=D.IMAGENET_STD)
    item = ds[0]
    shapes = {"image": (3, 256, 256), "target": (K, 64, 64), "target_weight": (K,), "keypoints": (K, 2),
              "center": (2,), "scale": (2,)}
    for key, shape in shapes.items():
        assert item[key].shape == shape and item[key].dtype == np.float32, key
    assert (item["image_id"], item["ann_id"], item["category_id"]) == (1, 7, 1)
    assert item["area"].dtype == np.float32 and item["bbox_score"] == 1.0
    assert abs(float(item["image"].mean())) < 2  # normalised, not 0..255
    batch = next(iter(torch.utils.data.DataLoader(torch.utils.data.ConcatDataset([ds, ds]), batch_size=2)))
    assert batch["image"].shape == (2, 3, 256, 256) and batch["ann_id"].tolist() == [7, 7]
    assert batch["area"].dtype == torch.float32
    assert ds.keypoint_names == D.AP10K_KEYPOINTS and ds.num_keypoints == K
    assert ds.skeleton[0] == [0, 1] and ds.flip_pairs == D.AP10K_FLIP_PAIRS
    np.testing.assert_allclose(ds.sigmas, D.AP10K_SIGMAS)


def test_training_augmentation_is_seeded_and_varies(tmp_path):
    ds, _ = one_instance_dataset(tmp_path)
    ds.train = True
    torch.manual_seed(123)
    a = [ds[0]["center"].tolist() + ds[0]["scale"].tolist() for _ in range(30)]
    ds2, _ = one_instance_dataset(tmp_path / "b")
    ds2.train = True
    torch.manual_seed(123)
    b = [ds2[0]["center"].tolist() + ds2[0]["scale"].tolist() for _ in range(30)]
    assert a == b                                  # reproducible from torch's seed
    assert len({tuple(x) for x in a}) > 20         # and actually random


def test_augmentation_parameters_follow_method(tmp_path):
    ds, _ = one_instance_dataset(tmp_path)
    rec = dict(ds.records[0])
    rng = np.random.default_rng(0)
    rec["keypoints"] = rec["keypoints"].copy()
    rec["keypoints"][8:, 2] = 0  # 8 labeled keypoints: no half-body
    draws = [ds.random_augmentation(rec, rng) for _ in range(4000)]
    factor = np.array([d[1][0] / rec["scale"][0] for d in draws])
    rot = np.array([d[2] for d in draws])
    assert all(np.array_equal(d[0], rec["center"]) for d in draws)
    assert factor.min() >= 0.5 and factor.max() <= 1.5 and abs(np.median(factor) - 1) < 0.05
    assert 0.15 < (factor == 1.5).mean() < 0.2               # P(N(0, 1) > 1) = 0.16 clipped at 1.5
    assert np.abs(rot).max() <= 80 and 0.37 < (rot == 0).mean() < 0.43
    assert 0.47 < np.mean([d[3] for d in draws]) < 0.53      # flip
    rec["keypoints"][:, 2] = 2                                 # 17 labeled: half-body with p = 0.3
    moved = np.mean([not np.array_equal(ds.random_augmentation(rec, rng)[0], rec["center"]) for _ in range(4000)])
    assert 0.27 < moved < 0.33


def test_workers_get_different_augmentation(tmp_path):
    ds, _ = one_instance_dataset(tmp_path)
    ds.train = True
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(torch.utils.data.ConcatDataset([ds] * 4), batch_size=1, num_workers=2)
    keypoints = [b["keypoints"].numpy().tobytes() for b in loader]
    assert len(set(keypoints)) == 4  # worker 0 and worker 1 do not repeat each other's draws


def test_half_body_coin_is_fair():
    kps = np.zeros((K, 3))
    kps[:, :2] = np.arange(K)[:, None] * 10.0
    kps[:, 2] = 2
    rng = np.random.default_rng(0)
    upper = 0
    for _ in range(4000):
        center, _ = D.half_body_box(kps, kps[:, 2] > 0, D.AP10K_UPPER_BODY, D.AP10K_LOWER_BODY, 1.0, rng)
        upper += np.isclose(center[0], kps[D.AP10K_UPPER_BODY, 0].mean())
    assert 0.47 < upper / 4000 < 0.53  # randn() < 0.5 would give 0.69


def test_reduced_jpeg_decode_matches_full_decode(tmp_path):
    """A big box on a 1024x768 JPEG is decoded at reduced size; crop and keypoints still agree."""
    rng = np.random.default_rng(8)
    box = (100, 80, 800, 600)
    kps = keypoints_for(box, rng)
    img = cv2.resize(rng.uniform(60, 200, (24, 32, 3)).astype(np.uint8), (1024, 768), interpolation=cv2.INTER_CUBIC)
    for k, (x, y, _) in enumerate(kps):
        cv2.circle(img, (int(round(x * 16)), int(round(y * 16))), 6 * 16, COLOURS[k], -1, cv2.LINE_AA, 4)
    ann_file, img_dir = write_dataset(tmp_path, [(1, "big.jpg", 1024, 768, img)], [annotation(3, 1, box, kps)])
    ds = D.KeypointDataset(ann_file, img_dir, train=False)
    item = ds[0]
    assert ds.records[0]["scale"][0] / 256 >= 2  # the reduced path is taken
    full = cv2.warpAffine(cv2.imread(os.path.join(img_dir, "big.jpg")),
                          D.get_affine_transform(item["center"], item["scale"], 0, (256, 256)), (256, 256),
                          flags=cv2.INTER_LINEAR)
    crop = denormalise(item["image"])
    assert np.abs(crop - full).mean() < 4
    for k in range(K):  # each keypoint still lies on its own dot
        x, y = np.round(item["keypoints"][k] * 4).astype(int)
        np.testing.assert_allclose(crop[y, x], COLOURS[k], atol=25)


# ---------------------------------------------------------------- bad input

def simple_json(tmp_path, anns=None, images=None, categories=None):
    rng = np.random.default_rng(9)
    box = (10, 10, 60, 40)
    kps = keypoints_for(box, rng)
    images = images if images is not None else [(1, "a.jpg", 100, 80, dot_image(100, 80, kps))]
    anns = anns if anns is not None else [annotation(11, 1, box, kps)]
    return write_dataset(tmp_path, images, anns, categories)


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n "images": [],\n "annotations": [,]\n}')
    with pytest.raises(ValueError, match=r"bad\.json.*line 3"):
        D.KeypointDataset(str(path), str(tmp_path), train=True)


def test_json_without_keypoint_categories(tmp_path):
    ann_file, img_dir = simple_json(tmp_path, categories=[{"id": 1, "name": "dog", "supercategory": "Canidae"}])
    with pytest.raises(ValueError, match=r"ann\.json.*no category lists 'keypoints'"):
        D.KeypointDataset(ann_file, img_dir, train=True)


def test_wrong_keypoint_length_names_annotation(tmp_path):
    ann = annotation(42, 1, (10, 10, 60, 40), keypoints_for((10, 10, 60, 40), np.random.default_rng(0)))
    ann["keypoints"] = ann["keypoints"][:-3]
    ann_file, img_dir = simple_json(tmp_path, anns=[ann])
    with pytest.raises(ValueError, match=r"ann\.json: annotation id 42 has 48 keypoint values, expected 51"):
        D.KeypointDataset(ann_file, img_dir, train=True)


def test_duplicate_annotation_ids(tmp_path):
    kps = keypoints_for((10, 10, 60, 40), np.random.default_rng(0))
    ann_file, img_dir = simple_json(tmp_path, anns=[annotation(5, 1, (10, 10, 60, 40), kps),
                                                    annotation(5, 1, (20, 10, 50, 40), kps)])
    with pytest.raises(ValueError, match=r"ann\.json: duplicate annotation id\(s\) \[5\]"):
        D.KeypointDataset(ann_file, img_dir, train=True)


def test_unknown_image_id(tmp_path):
    kps = keypoints_for((10, 10, 60, 40), np.random.default_rng(0))
    ann_file, img_dir = simple_json(tmp_path, anns=[annotation(5, 99, (10, 10, 60, 40), kps)])
    with pytest.raises(ValueError, match=r"annotation id 5 refers to unknown image id 99"):
        D.KeypointDataset(ann_file, img_dir, train=True)


def test_missing_image_file_names_file_and_annotation(tmp_path):
    kps = keypoints_for((10, 10, 60, 40), np.random.default_rng(0))
    ann_file, img_dir = simple_json(tmp_path, images=[(1, "gone.jpg", 100, 80, None)],
                                    anns=[annotation(17, 1, (10, 10, 60, 40), kps)])
    with pytest.raises(FileNotFoundError, match=r"gone\.jpg \(annotation ids \[17\]\)"):
        D.KeypointDataset(ann_file, img_dir, train=True)


def test_truncated_and_undecodable_images(tmp_path):
    ann_file, img_dir = simple_json(tmp_path)
    path = os.path.join(img_dir, "a.jpg")
    data = open(path, "rb").read()
    ds = D.KeypointDataset(ann_file, img_dir, train=False)
    ds[0]
    with open(path, "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match=r"truncated JPEG .*a\.jpg \(annotation id 11"):
        ds[0]
    with open(path, "wb") as f:
        f.write(b"this is not an image at all")
    with pytest.raises(ValueError, match=r"cannot decode image .*a\.jpg \(annotation id 11"):
        ds[0]


def test_image_size_disagreeing_with_json(tmp_path):
    kps = keypoints_for((10, 10, 60, 40), np.random.default_rng(0))
    ann_file, img_dir = simple_json(tmp_path, images=[(1, "a.png", 100, 80, dot_image(80, 100, kps))])
    ds = D.KeypointDataset(ann_file, img_dir, train=False)
    with pytest.raises(ValueError, match=r"a\.png is 80x100 .* json says 100x80 \(annotation id 11"):
        ds[0]


def test_grey_rgba_and_palette_png_are_converted(tmp_path):
    rng = np.random.default_rng(10)
    box = (10, 10, 60, 40)
    kps = keypoints_for(box, rng)
    grey = np.full((80, 100), 150, np.uint8)
    os.makedirs(tmp_path / "img")
    Image.fromarray(grey, "L").save(tmp_path / "img" / "grey.png")
    Image.fromarray(np.dstack([np.full((80, 100, 3), 150, np.uint8), np.full((80, 100), 77, np.uint8)]),
                    "RGBA").save(tmp_path / "img" / "rgba.png")
    palette = Image.fromarray(np.full((80, 100), 3, np.uint8), "P")
    palette.putpalette([0, 0, 0] * 3 + [150, 150, 150] + [255, 255, 255] * 252)
    palette.save(tmp_path / "img" / "pal.png")
    assert Image.open(tmp_path / "img" / "pal.png").mode == "P"
    images = [(i + 1, n, 100, 80, None) for i, n in enumerate(["grey.png", "rgba.png", "pal.png"])]
    ann_file, img_dir = write_dataset(tmp_path, images, [annotation(i + 1, i + 1, box, kps) for i in range(3)])
    ds = D.KeypointDataset(ann_file, img_dir, train=False)
    for i in range(3):
        crop = denormalise(ds[i]["image"])
        centre = crop[100:156, 100:156]
        np.testing.assert_allclose(centre, 150, atol=1.0)


def test_boxes_clipped_zero_area_skipped_and_summarised(tmp_path):
    rng = np.random.default_rng(11)
    kps = keypoints_for((10, 10, 60, 40), rng)
    none_labeled = kps.copy()
    none_labeled[:, 2] = 0
    anns = [annotation(1, 1, (-20, -10, 80, 60), kps),          # partly outside: clipped to [0, 0, 60, 50]
            annotation(2, 1, (30, 20, 0, 30), kps),             # zero width
            annotation(3, 1, (150, 20, 30, 30), kps),           # entirely outside the 100x80 image
            annotation(4, 1, (10, 10, 60, 40), none_labeled),   # nothing labeled
            annotation(5, 1, (10, 10, 60, 40), kps, iscrowd=1),
            annotation(6, 1, (10, 10, 60, 40), kps, num_keypoints=0)]  # COCOeval ignores it by this field
    ann_file, img_dir = simple_json(tmp_path, anns=anns)
    train = D.KeypointDataset(ann_file, img_dir, train=True)
    assert [r["ann_id"] for r in train.records] == [1, 6]
    np.testing.assert_allclose(train.records[0]["box"], [0, 0, 60, 50])
    np.testing.assert_allclose(train.records[0]["center"], [30, 25])
    assert "4 skipped" in train.skip_summary and "zero-area box: 2" in train.skip_summary
    assert "crowd: 1" in train.skip_summary and "no labeled keypoint: 1" in train.skip_summary
    assert "1 boxes clipped" in train.skip_summary
    evaluation = D.KeypointDataset(ann_file, img_dir, train=False)
    assert [r["ann_id"] for r in evaluation.records] == [1]
    assert "num_keypoints field is 0: 1" in evaluation.skip_summary


def test_unknown_keypoint_set_derives_pairs_and_warns_about_sigmas(tmp_path):
    names = ["beak", "left_wing", "right_wing", "tail"]
    cat = {"id": 1, "name": "bird", "keypoints": names, "skeleton": [[1, 2], [1, 3], [1, 4]]}
    kps = np.array([[20, 20, 2], [15, 30, 2], [40, 30, 1], [30, 45, 0]], float)
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600.0, "iscrowd": 0,
           "num_keypoints": 3, "keypoints": kps.ravel().tolist()}
    ann_file, img_dir = write_dataset(tmp_path, [(1, "b.png", 64, 64, np.zeros((64, 64, 3), np.uint8))], [ann], [cat])
    with pytest.warns(UserWarning, match="OKS sigma 0.05"):
        ds = D.KeypointDataset(ann_file, img_dir, train=True, image_size=(64, 64), heatmap_size=(16, 16))
    assert ds.flip_pairs == [(1, 2)] and ds.upper_body_ids is None
    np.testing.assert_allclose(ds.sigmas, [0.05] * 4)
    ds = D.KeypointDataset(ann_file, img_dir, train=True, sigmas=[0.03, 0.07, 0.07, 0.09])
    np.testing.assert_allclose(ds.sigmas, [0.03, 0.07, 0.07, 0.09])
    assert ds[0]["target_weight"][3] == 0
    with pytest.raises(ValueError, match="sigmas has shape"):
        D.KeypointDataset(ann_file, img_dir, train=True, sigmas=[0.1, 0.1])


# ---------------------------------------------------------------- few-shot

def few_shot_json(tmp_path):
    rng = np.random.default_rng(12)
    images, anns = [], []
    cats = [category(c, f"species{c}") for c in (1, 2, 3)]
    image_id = 0
    for c in (1, 2, 3):
        for i in range(10 + c):
            image_id += 1
            kps = keypoints_for((5, 5, 20, 20), rng)
            if i == 0:
                kps[:, 2] = 0  # an image whose only instance is unusable
            images.append((image_id, "shared.png", 32, 32, None))
            anns.append(annotation(image_id, image_id, (5, 5, 20, 20), kps, category_id=c))
    images[0] = (1, "shared.png", 32, 32, np.zeros((32, 32, 3), np.uint8))
    return write_dataset(tmp_path, images, anns, cats)


def test_few_shot_k_per_species_and_seeded(tmp_path):
    ann_file, img_dir = few_shot_json(tmp_path)
    ds = D.KeypointDataset(ann_file, img_dir, train=True, few_shot=3, few_shot_seed=0)
    species_of = {im: ds.coco.imgToAnns[im][0]["category_id"] for im in ds.few_shot_image_ids}
    assert sorted(np.bincount(list(species_of.values()))[1:].tolist()) == [3, 3, 3]
    assert all(ds.coco.imgToAnns[im][0]["num_keypoints"] > 0 for im in ds.few_shot_image_ids)
    assert sorted({r["image_id"] for r in ds.records}) == ds.few_shot_image_ids
    same = D.sample_few_shot(ds.coco, 3, seed=0)
    assert same == ds.few_shot_image_ids and same == sorted(same)
    other = [D.sample_few_shot(ds.coco, 3, seed=s) for s in (1, 2, 3)]
    assert any(o != same for o in other)
    assert len(D.sample_few_shot(ds.coco, 100, seed=0)) == 10 + 11 + 12 # all usable images when K is large
    full = D.KeypointDataset(ann_file, img_dir, train=True)
    assert full.few_shot_image_ids is None and len(full) == 33
