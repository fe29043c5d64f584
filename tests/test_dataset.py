"""Tests for dataset.py: samples through the real loader (flips, targets, augmentation, decoding,
EXIF), flip pairs and prompts from json, bad input, evaluation exclusions, detections,
few-shot, loaders."""
import contextlib
import io
import json
import os
import re

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import annotations as A
import dataset as D
import keypoints as KP
import transforms as T

K = len(KP.AP10K_KEYPOINTS)
COLOURS = [(int(c[0]), int(c[1]), int(c[2])) for c in
           np.random.default_rng(5).integers(40, 256, (K, 3))]  # BGR, one per keypoint


# ---------------------------------------------------------------- test data

def category(cid=1, name="dog", family="Canidae", keypoints=KP.AP10K_KEYPOINTS):
    return {"supercategory": family, "id": cid, "name": name, "keypoints": list(keypoints),
            "skeleton": KP.AP10K_SKELETON}


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
    inputs = {k: kwargs.pop(k) for k in D.INPUTS if k in kwargs}
    return D.KeypointDataset(ann_file, img_dir, train=False, inputs=inputs, **kwargs), kps


def denormalise(item_image, normalize="imagenet"):
    """(3, H, W) normalised RGB -> (H, W, 3) BGR float in 0..255."""
    mean, std = T.NORMALIZATION[normalize]
    rgb = item_image.transpose(1, 2, 0) * np.array(std) * 255 + np.array(mean) * 255
    return rgb[:, :, ::-1]


# ---------------------------------------------------------------- geometry


# ---------------------------------------------------------------- flips


@pytest.mark.parametrize("size", [(256, 256), (256, 192)])
def test_dataset_flip_sample_matches_mirrored_crop(tmp_path, size):
    """The real flip path (folded into the warp): mirrored image, x_in -> W - 1 - x_in, pairs
    swapped, and each flipped keypoint lies on its partner's dot."""
    ds, _ = one_instance_dataset(tmp_path, image_size=size, heatmap_size=(size[0] // 4, size[1] // 4))
    H, W = size
    plain, flipped = ds.make_sample(0, rot_deg=20), ds.make_sample(0, rot_deg=20, flip=True)
    assert plain["image"].shape == (3, H, W)
    np.testing.assert_allclose(flipped["image"], plain["image"][:, :, ::-1], atol=1e-4)
    perm = T.flip_permutation(K, ds.flip_pairs)
    x_in, fx_in = plain["keypoints"] * 4, flipped["keypoints"] * 4
    np.testing.assert_allclose(fx_in[:, 0], W - 1 - x_in[perm, 0], atol=1e-4)
    np.testing.assert_allclose(fx_in[:, 1], x_in[perm, 1], atol=1e-4)
    np.testing.assert_array_equal(flipped["target_weight"], plain["target_weight"][perm])
    crop = denormalise(flipped["image"])
    for k in range(K):
        if flipped["target_weight"][k] and 0 <= fx_in[k, 0] < W and 0 <= fx_in[k, 1] < H:
            x, y = np.round(fx_in[k]).astype(int)
            np.testing.assert_allclose(crop[y, x], COLOURS[perm[k]], atol=3)  # the partner's dot


# ---------------------------------------------------------------- flip pairs from names


def sided_json(tmp_path, names, **category_fields):
    """A one-instance dataset with the given keypoint names (all labeled, apart)."""
    k = len(names)
    kps = np.array([[20 + 8 * (i % 6), 20 + 8 * (i // 6), 2] for i in range(k)], float)
    cat = {"id": 1, "name": "thing", "keypoints": names, "skeleton": [], **category_fields}
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 60, 50], "area": 3000.0, "iscrowd": 0,
           "num_keypoints": k, "keypoints": kps.ravel().tolist()}
    return write_dataset(tmp_path, [(1, "b.png", 96, 80, np.zeros((80, 96, 3), np.uint8))], [ann], [cat])


def test_dataset_flip_pairs_json_flag_and_no_flip(tmp_path):
    names = ["nose", "antennaL", "antennaR", "earL"]
    ann_file, img_dir = sided_json(tmp_path, names, sigmas=[0.05] * 4)
    with pytest.raises(ValueError, match=r"ann\.json: .*'earL'.*--no-flip"):
        D.KeypointDataset(ann_file, img_dir, train=True)
    ds = D.KeypointDataset(ann_file, img_dir, train=True, flip_pairs="1,2")   # the --flip-pairs value
    assert ds.flip_pairs == [(1, 2)]
    ds = D.KeypointDataset(ann_file, img_dir, train=True, flip_pairs=[["antennaR", "antennaL"]])
    assert ds.flip_pairs == [(1, 2)]
    ds = D.KeypointDataset(ann_file, img_dir, train=True, flip=False)  # no flip: no error, no flipping
    assert ds.flip_pairs == [(1, 2)]
    assert not any(ds.transform.random_augmentation(ds.records[0], np.random.default_rng(0))[3] for _ in range(200))
    ds.flip_pairs = [(0, 3)]                        # assigning re-validates and reaches the transform
    assert ds.transform.flip_pairs == [(0, 3)]
    ann_file, img_dir = sided_json(tmp_path / "j", names, sigmas=[0.05] * 4, flip_pairs=[[1, 2], ["earL", "nose"]])
    assert D.KeypointDataset(ann_file, img_dir, train=True).flip_pairs == [(0, 3), (1, 2)]
    for bad, msg in [([[1, 4]], "neither"), ([[1, 2, 3]], "exactly two"), ([[1, 1]], "repeats"), ("1,2", "list")]:
        ann_file, img_dir = sided_json(tmp_path / "bad", names, sigmas=[0.05] * 4, flip_pairs=bad)
        with pytest.raises(ValueError, match=f"ann\\.json: 'flip_pairs': .*{msg}"):
            D.KeypointDataset(ann_file, img_dir, train=True)


def test_prompt_texts_and_sigmas_from_json(tmp_path):
    ds, _ = one_instance_dataset(tmp_path / "ap10k")
    assert ds.prompt_texts[4] == "tail root" and ds.keypoint_names[4] == "root_of_tail"
    assert [p for i, p in enumerate(ds.prompt_texts) if i != 4] == \
        [n.replace("_", " ") for i, n in enumerate(KP.AP10K_KEYPOINTS) if i != 4]
    names = ["beak", "left_wing", "right_wing", "tail_tip"]
    prompts = ["bird beak", "left wing", "right wing", "tail feathers"]
    ann_file, img_dir = sided_json(tmp_path / "a", names, keypoint_prompts=prompts, sigmas=[0.02, 0.03, 0.03, 0.04])
    ds = D.KeypointDataset(ann_file, img_dir, train=True)
    assert ds.prompt_texts == prompts and ds.flip_pairs == [(1, 2)]
    np.testing.assert_array_equal(ds.sigmas, [0.02, 0.03, 0.03, 0.04])
    assert ds.sigmas.dtype == np.float64
    ds = D.KeypointDataset(ann_file, img_dir, train=True, sigmas=[0.1, 0.2, 0.2, 0.3])  # the argument wins
    np.testing.assert_array_equal(ds.sigmas, [0.1, 0.2, 0.2, 0.3])
    assert KP.prompt_texts_for(KP.AP10K_KEYPOINTS) == KP.AP10K_PROMPTS
    assert KP.prompt_texts_for(names) == ["beak", "left wing", "right wing", "tail tip"]
    assert KP.prompt_texts_for(KP.COCO_KEYPOINTS)[3] == "left ear"
    ann_file, img_dir = sided_json(tmp_path / "b", names, sigmas=[0.02] * 4)
    assert D.KeypointDataset(ann_file, img_dir, train=True).prompt_texts == ["beak", "left wing", "right wing",
                                                                             "tail tip"]
    for fields, msg in [(dict(keypoint_prompts=["a", "b"]), "'keypoint_prompts' must be 4 non-empty strings"),
                        (dict(keypoint_prompts=["a", "b", "", "d"]), "'keypoint_prompts' must be 4"),
                        (dict(sigmas=[0.1, 0.1]), r"'sigmas' must be a list of 4 numbers"),
                        (dict(sigmas=[0.1, "0.1", 0.1, 0.1]), r"'sigmas'\[1\] is '0.1', not a number"),
                        (dict(sigmas=[0.1, 0.1, 0.0, 0.1]), "sigmas must be finite and > 0")]:
        ann_file, img_dir = sided_json(tmp_path / "c", names, **fields)
        with pytest.raises(ValueError, match=r"ann\.json.*" + msg):
            D.KeypointDataset(ann_file, img_dir, train=True)


def test_unknown_keypoint_set_derives_pairs_and_warns_about_sigmas(tmp_path):
    names = ["beak", "left_wing", "right_wing", "tail"]
    cat = {"id": 1, "name": "bird", "keypoints": names, "skeleton": [[1, 2], [1, 3], [1, 4]]}
    kps = np.array([[20, 20, 2], [15, 30, 2], [40, 30, 1], [30, 45, 0]], float)
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600.0, "iscrowd": 0,
           "num_keypoints": 3, "keypoints": kps.ravel().tolist()}
    ann_file, img_dir = write_dataset(tmp_path, [(1, "b.png", 64, 64, np.zeros((64, 64, 3), np.uint8))], [ann], [cat])
    with pytest.warns(UserWarning, match="OKS sigma 0.05"):
        ds = D.KeypointDataset(ann_file, img_dir, train=True, inputs=dict(image_size=(64, 64), heatmap_size=(16, 16)))
    assert ds.flip_pairs == [(1, 2)] and ds.upper_body_ids is None
    assert ds.skeleton == [[0, 1], [0, 2], [0, 3]]
    np.testing.assert_allclose(ds.sigmas, [0.05] * 4)
    ds = D.KeypointDataset(ann_file, img_dir, train=True, sigmas=[0.03, 0.07, 0.07, 0.09])
    np.testing.assert_allclose(ds.sigmas, [0.03, 0.07, 0.07, 0.09])
    assert ds[0]["target_weight"][3] == 0
    with pytest.raises(ValueError, match="sigmas given"):
        D.KeypointDataset(ann_file, img_dir, train=True, sigmas=[0.1, 0.1])


# ---------------------------------------------------------------- heatmap targets (MSRA, sigma 2)


@pytest.mark.parametrize("size", [(256, 256), (256, 192)])
def test_image_keypoints_through_targets_and_back(tmp_path, size):
    """Image keypoints -> crop -> Gaussian targets -> decode -> image: within half a heatmap pixel."""
    ds, kps = one_instance_dataset(tmp_path, image_size=size, heatmap_size=(size[0] // 4, size[1] // 4))
    item = ds[0]
    assert item["target"].shape == (K, size[0] // 4, size[1] // 4)
    coords, _ = T.decode_heatmaps(item["target"][None])
    back = T.heatmap_to_image(coords, item["center"][None], item["scale"][None], ds.heatmap_size)[0]
    px_per_hm = item["scale"][0] / ds.heatmap_size[1]
    np.testing.assert_allclose(item["scale"][1] / ds.heatmap_size[0], px_per_hm, rtol=1e-6)  # same stride
    assert np.abs(back - kps[:, :2]).max() <= 0.5 * px_per_hm + 1e-3


# ---------------------------------------------------------------- items and augmentation

ITEM_KEYS = {"image", "target", "target_weight", "keypoints", "image_id", "ann_id", "category_id", "center", "detection",
             "scale", "bbox_score"}


def test_item_keys_dtypes_and_default_collate(tmp_path):
    ds, _ = one_instance_dataset(tmp_path, normalize="clip")
    item = ds[0]
    assert set(item) == ITEM_KEYS
    shapes = {"image": (3, 256, 256), "target": (K, 64, 64), "target_weight": (K,), "keypoints": (K, 2),
              "center": (2,), "scale": (2,)}
    for key, shape in shapes.items():
        assert item[key].shape == shape and item[key].dtype == np.float32, key
    assert (item["image_id"], item["ann_id"], item["category_id"]) == (1, 7, 1)
    assert item["bbox_score"].dtype == np.float32 and item["bbox_score"] == 1.0
    assert abs(float(item["image"].mean())) < 2  # normalised, not 0..255
    np.testing.assert_allclose(denormalise(item["image"], "clip")[128, 128], 90, atol=1)  # background
    batch = next(iter(D.make_loader(torch.utils.data.ConcatDataset([ds, ds]), 2, 0, shuffle=False)))
    assert batch["image"].shape == (2, 3, 256, 256) and batch["ann_id"].tolist() == [7, 7]
    assert ds.keypoint_names == KP.AP10K_KEYPOINTS and ds.num_keypoints == K
    assert ds.skeleton[0] == [0, 1] and ds.flip_pairs == KP.AP10K_FLIP_PAIRS
    np.testing.assert_allclose(ds.sigmas, KP.AP10K_SIGMAS)
    assert (ds.mean, ds.std) == T.NORMALIZATION["clip"] and ds.image_size == (256, 256)
    assert os.path.isabs(ds.ann_file) and os.path.isabs(ds.image_dir)


def test_normalization_and_sizes_are_checked(tmp_path):
    ds, _ = one_instance_dataset(tmp_path)            # default: ImageNet mean / std
    assert (ds.mean, ds.std) == T.NORMALIZATION["imagenet"]
    np.testing.assert_allclose(denormalise(ds[0]["image"], "imagenet")[128, 128], 90, atol=1)
    for kwargs, msg in [(dict(normalize="openai"), "normalize must be one of"),
                        (dict(image_size=(256,)), r"image_size must be \(H, W\)"),
                        (dict(heatmap_size=(64, 0)), r"heatmap_size must be \(H, W\)")]:
        with pytest.raises(ValueError, match=msg):
            one_instance_dataset(tmp_path / "x", **kwargs)


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
    draws = [ds.transform.random_augmentation(rec, rng) for _ in range(4000)]
    factor = np.array([d[1][0] / rec["scale"][0] for d in draws])
    rot = np.array([d[2] for d in draws])
    shift = np.array([d[0] - rec["center"] for d in draws]) / rec["box"][2:]
    assert 0.27 < (shift != 0).any(1).mean() < 0.33 and np.abs(shift).max() <= 0.2   # box jitter only
    assert factor.min() >= 0.5 and factor.max() <= 1.5 and abs(np.median(factor) - 1) < 0.05
    assert 0.15 < (factor == 1.5).mean() < 0.2               # P(N(0, 1) > 1) = 0.16 clipped at 1.5
    assert np.abs(rot).max() <= 80 and 0.37 < (rot == 0).mean() < 0.43
    assert 0.47 < np.mean([d[3] for d in draws]) < 0.53      # flip
    rec["keypoints"][:, 2] = 2                                 # 17 labeled: half-body with p = 0.3
    kp = rec["keypoints"]
    halves = [kp[KP.AP10K_UPPER_BODY, :2].mean(0), kp[[4] + list(range(10, 17)), :2].mean(0)]
    half = np.mean([any(np.allclose(ds.transform.random_augmentation(rec, rng)[0], c) for c in halves) for _ in range(4000)])
    assert 0.27 < half < 0.33


def test_half_body_groups_are_ap10k_meta_and_coin_is_fair(tmp_path):
    """AP-10K's published groups: upper 0-3, 5-9; lower 4, 10-16 (right_front_paw in the lower body)."""
    ds, _ = one_instance_dataset(tmp_path)
    assert ds.upper_body_ids == KP.AP10K_UPPER_BODY
    kps = np.zeros((K, 3))
    kps[:, 0], kps[:, 1], kps[:, 2] = 2.0 ** np.arange(K), 3.0 * np.arange(K), 2  # every subset: its own mean
    rng = np.random.default_rng(0)
    upper_mean = kps[[0, 1, 2, 3, 5, 6, 7, 8, 9], :2].mean(0)
    lower_mean = kps[[4, 10, 11, 12, 13, 14, 15, 16], :2].mean(0)
    upper = 0
    for _ in range(4000):
        center, scale = T.half_body_box(kps, kps[:, 2] > 0, ds.upper_body_ids, 1.0, rng)
        is_upper = np.allclose(center, upper_mean)
        assert is_upper or np.allclose(center, lower_mean)
        upper += is_upper
    assert 0.47 < upper / 4000 < 0.53  # randn() < 0.5 would give 0.69


def test_workers_get_different_augmentation(tmp_path):
    ds, _ = one_instance_dataset(tmp_path)
    ds.train = True
    torch.manual_seed(0)
    loader = D.make_loader(torch.utils.data.ConcatDataset([ds] * 4), 1, 2, shuffle=False)
    keypoints = [b["keypoints"].numpy().tobytes() for b in loader]
    assert len(set(keypoints)) == 4  # worker 0 and worker 1 do not repeat each other's draws


def test_reduced_jpeg_decode_matches_full_decode(tmp_path):
    """A big box on a 1024x768 JPEG: by default the crop is one bilinear warp of the image at full
    resolution (the authors'); with reduced_decode the JPEG is decoded at reduced size, and crop
    and keypoints still agree with it."""
    rng = np.random.default_rng(8)
    box = (100, 80, 800, 600)
    kps = keypoints_for(box, rng)
    img = cv2.resize(rng.uniform(60, 200, (24, 32, 3)).astype(np.uint8), (1024, 768), interpolation=cv2.INTER_CUBIC)
    for k, (x, y, _) in enumerate(kps):
        cv2.circle(img, (int(round(x * 16)), int(round(y * 16))), 6 * 16, COLOURS[k], -1, cv2.LINE_AA, 4)
    ann_file, img_dir = write_dataset(tmp_path, [(1, "big.jpg", 1024, 768, img)], [annotation(3, 1, box, kps)])
    full_res = D.KeypointDataset(ann_file, img_dir, train=False)[0]
    ds = D.KeypointDataset(ann_file, img_dir, train=False, reduced_decode=True)
    item = ds[0]
    assert ds.records[0]["scale"][0] / 256 >= 2  # the reduced path is taken
    full = cv2.warpAffine(cv2.imread(os.path.join(img_dir, "big.jpg")),
                          T.get_affine_transform(item["center"], item["scale"], 0, (256, 256)), (256, 256),
                          flags=cv2.INTER_LINEAR)
    assert np.abs(denormalise(full_res["image"]) - full).mean() < 0.6   # rounding only
    crop = denormalise(item["image"])
    assert np.abs(crop - full).mean() < 4
    for k in range(K):  # each keypoint still lies on its own dot
        x, y = np.round(item["keypoints"][k] * 4).astype(int)
        np.testing.assert_allclose(crop[y, x], COLOURS[k], atol=25)


def test_exif_orientation_is_applied_and_the_json_size_decides_the_frame(tmp_path):
    """A JPEG stored 120x80 with EXIF orientation 6 (rotate 90 degrees clockwise to display) is a
    80x120 picture: with the displayed size in the json the labels are read in that frame; with
    the stored size in the json the stored frame is used, with a warning naming the file."""
    from PIL import Image
    stored = np.full((80, 120, 3), 90, np.uint8)
    cv2.circle(stored, (100, 20), 6, (0, 0, 255), -1)     # BGR red dot at stored (x, y) = (100, 20)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored[..., ::-1]).save(tmp_path / "rot.jpg", quality=95, exif=exif.tobytes())
    displayed = cv2.imread(str(tmp_path / "rot.jpg"))
    assert displayed.shape == (120, 80, 3)
    ys, xs = np.nonzero(displayed[..., 2] > 200)
    dot = (xs.mean(), ys.mean())                         # (59, 100) in the displayed picture
    for (w, h), point in (((80, 120), dot), ((120, 80), (100, 20))):
        kps = np.zeros((K, 3))
        kps[0] = (*point, 2)
        box = (0, 0, w, h)
        img_dir = tmp_path / f"{w}"
        img_dir.mkdir()
        (img_dir / "rot.jpg").write_bytes((tmp_path / "rot.jpg").read_bytes())
        path = img_dir / "ann.json"
        path.write_text(json.dumps({"images": [{"id": 1, "file_name": "rot.jpg", "width": w, "height": h}],
                                    "annotations": [annotation(1, 1, box, kps)], "categories": [category()]}))
        ds = D.KeypointDataset(str(path), str(img_dir), train=False)
        if w == 120:
            with pytest.warns(UserWarning, match=r"rot\.jpg: the json gives the size of its stored pixels"):
                item = ds[0]
        else:
            item = ds[0]
        crop = denormalise(item["image"])
        x, y = np.round(item["keypoints"][0] * 4).astype(int)
        assert crop[y, x, 2] > 180 and crop[y, x, 0] < 90, crop[y, x]   # BGR: the red dot


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
    anns = [annotation(1, 1, (-20, -10, 80, 60), kps),          # partly outside: [0, 0, 59, 49]
            annotation(2, 1, (30, 20, 0, 30), kps),             # zero width
            annotation(3, 1, (150, 20, 30, 30), kps),           # entirely outside the 100x80 image
            annotation(4, 1, (10, 10, 60, 40), none_labeled),   # nothing labeled
            annotation(5, 1, (10, 10, 60, 40), kps, iscrowd=1),
            annotation(6, 1, (10, 10, 60, 40), kps, num_keypoints=0)]  # COCOeval ignores it by this field
    ann_file, img_dir = simple_json(tmp_path, anns=anns)
    train = D.KeypointDataset(ann_file, img_dir, train=True)
    assert [r["ann_id"] for r in train.records] == [1, 6]
    # the authors' box: far corner one pixel in (x + w - 1 = 59), clipped to the pixels
    np.testing.assert_allclose(train.records[0]["box"], [0, 0, 59, 49])
    np.testing.assert_allclose(train.records[0]["center"], [29.5, 24.5])
    np.testing.assert_allclose(A.instance_box([10, 20, 30, 40], 100, 80), [10, 20, 29, 39])
    np.testing.assert_allclose(A.instance_box([90, 70, 30, 40], 100, 80), [90, 70, 9, 9])
    assert "4 skipped" in train.skip_summary and "zero-area box: 2" in train.skip_summary
    assert "crowd: 1" in train.skip_summary and "no labeled keypoint: 1" in train.skip_summary
    assert "1 boxes clipped" in train.skip_summary
    evaluation = D.KeypointDataset(ann_file, img_dir, train=False)
    assert [r["ann_id"] for r in evaluation.records] == [1]
    assert "num_keypoints field is 0: 1" in evaluation.skip_summary
    assert sorted(evaluation.coco.anns) == [1, 4, 5, 6]   # 2 and 3 cannot be predicted: not scored either
    assert "2 of them removed from the scored ground truth" in evaluation.skip_summary


def test_non_finite_and_malformed_fields_are_one_clear_line(tmp_path):
    box = (10, 10, 60, 40)
    kps = keypoints_for(box, np.random.default_rng(0))

    def check(msg, ann_change=None, image_change=None, cat_change=None):
        ann, cat = annotation(11, 1, box, kps), category()
        image = {"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}
        for item, change in ((ann, ann_change), (image, image_change), (cat, cat_change)):
            if change:
                change(item)
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({"images": [image], "annotations": [ann], "categories": [cat]}))
        with pytest.raises(ValueError, match=r"^[^\n]*bad\.json[^\n]*" + msg + r"[^\n]*$"):
            D.KeypointDataset(str(path), str(tmp_path), train=True)

    check(r"annotation id 11: 'keypoints'\[4\] is nan, not a finite number",
          lambda a: a["keypoints"].__setitem__(4, float("nan")))
    check(r"annotation id 11: 'bbox'\[2\] is inf, not a finite number", lambda a: a["bbox"].__setitem__(2, float("inf")))
    check(r"annotation id 11: 'area' is nan, not a finite number", lambda a: a.__setitem__("area", float("nan")))
    check(r"image id 1: 'width' is nan, not a finite number", image_change=lambda i: i.__setitem__("width", float("nan")))
    check(r"image id 1: 'height' is -inf", image_change=lambda i: i.__setitem__("height", float("-inf")))
    check(r"annotation id 11: 'bbox'\[1\] is '10', not a number", lambda a: a["bbox"].__setitem__(1, "10"))
    check(r"annotation id 11: 'keypoints'\[0\] is None, not a number", lambda a: a["keypoints"].__setitem__(0, None))
    check(r"image id 1: 'width' is '100', not a finite number", image_change=lambda i: i.__setitem__("width", "100"))
    check(r"image id 1: 'width' is -5, must be >= 0", image_change=lambda i: i.__setitem__("width", -5))
    check(r"annotation #0 \(image id 1\) has no 'id'", lambda a: a.pop("id"))
    check(r"annotation #0 \(image id 1\): 'id' is '11', not an integer", lambda a: a.__setitem__("id", "11"))
    check(r"image #0 has no 'id'", image_change=lambda i: i.pop("id"))
    check(r"image #0: 'id' is 1\.5, not an integer", image_change=lambda i: i.__setitem__("id", 1.5))
    check(r"annotation id 11: 'area' is 0, and OKS divides by it", lambda a: a.__setitem__("area", 0))
    check(r"annotation id 11 has no 4-number bbox", lambda a: a.__setitem__("bbox", [1, 2, 3]))
    check(r"annotation id 11: 'iscrowd' is '0', not a finite number", lambda a: a.__setitem__("iscrowd", "0"))


def test_skeleton_forms_and_spaced_names_never_block_training(tmp_path):
    """The skeleton only draws: 1-based (COCO) is read as such, 0-based (mmpose's Animal Kingdom
    json: an index 0, none above K - 1) is used as it is, an unusable one is dropped; each with
    one warning naming the file. Names with surrounding spaces ("Ankle_Left ") keep their
    stored form and lose the spaces for prompts and left/right pairs."""
    def load(skeleton, names=KP.AP10K_KEYPOINTS, sub="a"):
        cat = dict(category(keypoints=names), skeleton=skeleton)
        ann_file, img_dir = simple_json(tmp_path / sub, categories=[cat])
        return D.KeypointDataset(ann_file, img_dir, train=True)

    assert load([[1, 2], [17, 16]]).skeleton == [[0, 1], [16, 15]]
    with pytest.warns(UserWarning, match=r"ann\.json: the skeleton is 0-based"):
        assert load([[1, 0], [2, 0], [16, 15]], sub="b").skeleton == [[1, 0], [2, 0], [16, 15]]
    for bad in ([[1, 18]], [[0, 17]], [[1, "2"]], "1-2"):
        with pytest.warns(UserWarning, match=r"ann\.json: skeleton .* dropped \(it only draws"):
            assert load(bad, sub="c").skeleton == []
    names = [n + " " if n.startswith("left") else n for n in KP.AP10K_KEYPOINTS]
    with pytest.warns(UserWarning, match=r"surrounding spaces; stripped for the prompts"):
        ds = load([], names, sub="d")
    assert ds.keypoint_names == names and ds.prompt_texts[0] == "left eye"
    assert (0, 1) in ds.flip_pairs and (11, 14) in ds.flip_pairs


def test_keypoint_annotations_of_an_unlisted_category_are_taken(tmp_path):
    """mmpose's Animal Kingdom sample lists categories 1-2 and annotates category 4: such
    keypoint annotations join the file's keypoint set as 'category 4', with one warning; an
    annotation of an unlisted category without keypoints is still an error."""
    box, rng = (10, 10, 60, 40), np.random.default_rng(0)
    ann_file, img_dir = simple_json(tmp_path, anns=[annotation(11, 1, box, keypoints_for(box, rng),
                                                              category_id=4)])
    with pytest.warns(UserWarning, match=r"ann\.json: annotations of category id\(s\) \[4\]"):
        ds = D.KeypointDataset(ann_file, img_dir, train=False)
    assert len(ds) == 1 and ds.coco.cats[4]["name"] == "category 4" and 4 in ds.keypoint_category_ids
    bad = {"id": 12, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}
    ann_file, img_dir = simple_json(tmp_path / "b", anns=[bad])
    with pytest.raises(ValueError, match="annotation id 12 refers to unknown category id 7"):
        D.KeypointDataset(ann_file, img_dir, train=False)


def test_keypoints_with_the_same_prompt_text_are_refused(tmp_path):
    for names, prompts in ((["Neck", "neck", "tail"], None), (["neck ", "neck", "tail"], None),
                           (["a", "b", "c"], ["the  Neck", "the neck", "tail"])):
        fields = {"sigmas": [0.05] * 3, **({"keypoint_prompts": prompts} if prompts else {})}
        ann_file, img_dir = sided_json(tmp_path, names, **fields)
        with pytest.raises(ValueError, match=r"ann\.json: keypoints .* have the same prompt text"):
            D.KeypointDataset(ann_file, img_dir, train=True)


def test_image_size_zero_is_skipped_and_an_empty_training_set_is_an_error(tmp_path):
    box = (10, 10, 60, 40)
    kps = keypoints_for(box, np.random.default_rng(0))
    ann_file, img_dir = simple_json(tmp_path, images=[(1, "a.jpg", 100, 80, dot_image(100, 80, kps)),
                                                      (2, "z.jpg", 0, 80, None)],
                                    anns=[annotation(1, 1, box, kps), annotation(2, 2, box, kps)])
    ds = D.KeypointDataset(ann_file, img_dir, train=True)
    assert [r["ann_id"] for r in ds.records] == [1] and "image size 0: 1" in ds.skip_summary
    ann_file, img_dir = simple_json(tmp_path / "b", images=[(2, "z.jpg", 0, 80, None)],
                                    anns=[annotation(2, 2, box, kps)])
    with pytest.raises(ValueError, match=r"b/ann\.json: no usable training instance \(.*image size 0: 1"):
        D.KeypointDataset(ann_file, img_dir, train=True)
    ann_file, img_dir = simple_json(tmp_path / "c", anns=[annotation(3, 1, box, kps, iscrowd=1)])
    with pytest.raises(ValueError, match=r"c/ann\.json: no usable training instance \(.*crowd: 1"):
        D.KeypointDataset(ann_file, img_dir, train=True)


def test_empty_image_file_names_the_file(tmp_path):
    ann_file, img_dir = simple_json(tmp_path)
    path = os.path.join(img_dir, "a.jpg")
    ds = D.KeypointDataset(ann_file, img_dir, train=False)
    open(path, "wb").close()
    with pytest.raises(ValueError, match=r"a\.jpg is empty \(0 bytes\) \(annotation id 11"):
        ds[0]
    with pytest.raises(ValueError, match=r"ann\.json: image file .*a\.jpg is empty \(0 bytes\) \(annotation ids \[11\]\)"):
        D.KeypointDataset(ann_file, img_dir, train=False)


def test_errors_inside_loader_workers_end_in_one_readable_line(tmp_path):
    ann_file, img_dir = simple_json(tmp_path)
    ds = D.KeypointDataset(ann_file, img_dir, train=True)
    path = os.path.join(img_dir, "a.jpg")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError) as info:
        next(iter(D.make_loader(ds, 1, 1, shuffle=False)))
    last = str(info.value).strip().splitlines()[-1]
    assert re.fullmatch(r"ValueError: truncated JPEG .*a\.jpg \(annotation id 11, image id 1, .*ann\.json\)", last), last


# ---------------------------------------------------------------- evaluation: what is scored

def coco_ap(coco, results, sigmas):
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(results), "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[0]


def test_unpredictable_instances_are_excluded_from_both_sides(tmp_path):
    """A perfect model (the ground truth of every record) scores AP 1.0: instances that cannot be
    predicted leave the scored ground truth too, instead of capping AP below 1."""
    rng = np.random.default_rng(13)
    kps_a, kps_b = keypoints_for((5, 5, 40, 30), rng), keypoints_for((50, 40, 45, 35), rng)
    unlabeled = kps_a.copy()
    unlabeled[:, 2] = 0
    cats = [category(), {"id": 2, "name": "rock", "supercategory": "thing"}]   # 2: no keypoints
    anns = [annotation(1, 1, (5, 5, 40, 30), kps_a), annotation(7, 1, (50, 40, 45, 35), kps_b),
            annotation(2, 1, (30, 20, 0, 30), kps_a),                              # zero-area box
            annotation(3, 2, (5, 5, 40, 30), kps_a),                               # image size 0
            {"id": 4, "image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5]},      # category without keypoints
            annotation(5, 1, (5, 5, 40, 30), unlabeled, num_keypoints=3),          # nothing labeled, yet counted
            annotation(6, 1, (5, 5, 90, 70), kps_a, iscrowd=1)]                    # crowd: COCOeval ignores it
    images = [(1, "a.png", 100, 80, dot_image(100, 80, kps_a)), (2, "z.png", 100, 0, None)]
    ann_file, img_dir = write_dataset(tmp_path, images, anns, cats)
    ds = D.KeypointDataset(ann_file, img_dir, train=False)
    assert [r["ann_id"] for r in ds.records] == [1, 7]
    for reason in ("zero-area box: 1", "image size 0: 1", "category without keypoints: 1",
                   "no labeled keypoint: 1", "crowd: 1", "4 of them removed"):
        assert reason in ds.skip_summary, reason
    assert sorted(ds.coco.anns) == [1, 6, 7]
    perfect = [{"image_id": r["image_id"], "category_id": r["category_id"], "score": 1.0,
                "keypoints": r["keypoints"].ravel().tolist()} for r in ds.records]
    assert coco_ap(ds.coco, perfect, ds.sigmas) == 1.0
    # dropped from one side only (the predictions), the same perfect model would lose AP
    raw = COCO()
    raw.dataset = {k: v for k, v in json.load(open(ann_file)).items()}
    raw.dataset["annotations"] = [a for a in raw.dataset["annotations"] if a["category_id"] == 1]
    with contextlib.redirect_stdout(io.StringIO()):
        raw.createIndex()
    assert coco_ap(raw, perfect, ds.sigmas) < 0.9


def test_annotation_ids_of_any_value_score_the_same(tmp_path):
    """Ids are the user's: an annotation id 0 or a negative one changes no metric (pycocotools
    alone takes a ground-truth id 0 as "unmatched", which costs AP)."""
    import metrics
    rng = np.random.default_rng(3)
    kps_a, kps_b = keypoints_for((5, 5, 40, 30), rng), keypoints_for((50, 40, 45, 35), rng)
    image = [(1, "a.png", 100, 80, dot_image(100, 80, kps_a))]
    aps = []
    for ids in ((1, 2), (0, -3)):
        anns = [annotation(ids[0], 1, (5, 5, 40, 30), kps_a), annotation(ids[1], 1, (50, 40, 45, 35), kps_b)]
        ds = D.KeypointDataset(*write_dataset(tmp_path / str(ids[1]), image, anns), train=False)
        perfect = [{"image_id": 1, "category_id": 1, "score": 1.0, "ann_id": r["ann_id"],
                    "keypoints": r["keypoints"].ravel().tolist()} for r in ds.records]
        aps.append(metrics.coco_keypoint_eval(ds.coco, perfect, ds.sigmas)[0]["AP"])
        assert metrics.keypoint_accuracy(perfect, ds.coco, ds.keypoint_names, 0.2)["pck"] == 1.0
    assert aps == [1.0, 1.0]
    assert coco_ap(ds.coco, [{k: v for k, v in r.items() if k != "ann_id"} for r in perfect],
                   ds.sigmas) < 1.0   # what pycocotools alone makes of id 0


# ---------------------------------------------------------------- detected boxes

def write_detections(tmp_path, dets, name="dets.json"):
    path = tmp_path / name
    path.write_text(json.dumps(dets))
    return str(path)


def test_load_detections_maps_filters_and_validates(tmp_path):
    ann_file, img_dir = simple_json(tmp_path)
    ds = D.KeypointDataset(ann_file, img_dir, train=False)
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 60, 40], "score": 0.9},
            {"image_id": 1, "category_id": 18, "bbox": [5, 5, 30, 30], "score": 0.6},
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.1}]
    path = write_detections(tmp_path, dets)
    with pytest.warns(UserWarning, match="2 categories"):
        kept = A.load_detections(path, ds.coco, score_threshold=0.5)
    assert [(d["score"], d["category_id"]) for d in kept] == [(0.9, 1), (0.6, 1)]  # one keypoint category: all of it
    with pytest.warns(UserWarning):
        assert len(A.load_detections(path, ann_file, 0.0)) == 3          # the ground truth by its path
    for bad, msg in [([dict(dets[0], image_id=99)], r"detection #0: image id 99 is not in the ground-truth json"),
                     ([dets[0], dict(dets[0], bbox=[1, float("nan"), 3, 4])], r"detection #1: 'bbox'\[1\] is nan"),
                     ([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}], r"detection #0: 'score' is None"),
                     ([dict(dets[0], bbox=[1, 2, 3])], r"detection #0: 'bbox' must be a list of 4 numbers"),
                     ({"image_id": 1}, "expected a list of detections")]:
        with pytest.raises(ValueError, match=r"dets\.json: " + msg):
            A.load_detections(write_detections(tmp_path, bad), ds.coco, 0.0)
    few_ann, few_dir = few_shot_json(tmp_path / "species")                 # 3 keypoint categories
    multi = D.KeypointDataset(few_ann, few_dir, train=False)
    path = write_detections(tmp_path, [dict(dets[0], category_id=2)])
    assert A.load_detections(path, multi.coco)[0]["category_id"] == 2
    path = write_detections(tmp_path, [dict(dets[0], category_id=7)])
    with pytest.raises(ValueError, match=r"detection #0: category_id 7 is not a keypoint category"):
        A.load_detections(path, multi.coco)


def test_dataset_with_detected_boxes(tmp_path):
    ann_file, img_dir = simple_json(tmp_path)
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 60, 40], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [20, 15, 50, 30], "score": 0.6},
            {"image_id": 1, "category_id": 1, "bbox": [200, 15, 50, 30], "score": 0.7}]  # outside the image
    ds = D.KeypointDataset(ann_file, img_dir, train=False, boxes=dets)
    assert len(ds) == 2 and "3 detections (eval): 2 boxes kept, 1 skipped" in ds.skip_summary
    assert "1 skipped (detection with no area in the image: 1), 0 boxes clipped" in ds.skip_summary
    inside = [dict(dets[0], bbox=[0.1, 0.7, 99.9 - 1e-9, 79.3])]    # float boxes that just fit
    assert "0 boxes clipped" in D.KeypointDataset(ann_file, img_dir, train=False, boxes=inside).skip_summary
    items = [ds[0], ds[1]]
    assert [it["detection"] for it in items] == [True, True] and set(items[0]) == ITEM_KEYS
    np.testing.assert_allclose([it["bbox_score"] for it in items], [0.9, 0.6], rtol=1e-6)
    np.testing.assert_allclose(items[1]["center"], [45, 30])
    assert items[0]["target_weight"].sum() == 0
    assert sorted(ds.coco.anns) == [11]                       # the ground truth stays what is scored
    with pytest.raises(ValueError, match="evaluation only"):
        D.KeypointDataset(ann_file, img_dir, train=True, boxes=dets)
    with pytest.raises(ValueError, match=r"boxes\[0\]: category_id 18 is not a keypoint category"):
        D.KeypointDataset(ann_file, img_dir, train=False, boxes=[dict(dets[0], category_id=18)])


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
    ds = D.KeypointDataset(ann_file, img_dir, train=True, few_shot=(3, 0))
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


def test_few_shot_is_for_training_and_positive(tmp_path):
    ann_file, img_dir = few_shot_json(tmp_path)
    for kwargs in (dict(train=False, few_shot=(3, 0)), dict(train=True, few_shot=(0, 0)), dict(train=True, few_shot=(-2, 0)),
                   dict(train=True, few_shot=3), dict(train=True, few_shot=(3.0, 0))):
        with pytest.raises(ValueError, match=r"few_shot must be \(a positive number of images per species, seed\)"):
            D.KeypointDataset(ann_file, img_dir, **kwargs)


# ---------------------------------------------------------------- loaders

def test_default_workers(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert [D.default_workers(n) for n in (1, 2, 3, 4, 16, 32)] == [8, 8, 5, 4, 1, 0]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert D.default_workers() == 2 and D.default_workers(2) == 1 and D.default_workers(4) == 0
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)     # macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert D.default_workers() == 6 and D.default_workers(4) == 1


def test_make_loader(tmp_path):
    ds, _ = one_instance_dataset(tmp_path)
    both = torch.utils.data.ConcatDataset([ds] * 3)
    loader = D.make_loader(both, 2, 0, shuffle=False, drop_last=True)
    assert [len(b["ann_id"]) for b in loader] == [2]
    sampler = torch.utils.data.SequentialSampler(both)
    assert D.make_loader(both, 2, 0, shuffle=False, sampler=sampler).sampler is sampler
    with pytest.raises(ValueError, match="either shuffle=True or a sampler"):
        D.make_loader(both, 2, 0, shuffle=True, sampler=sampler)


def test_json_variants_of_other_tools_load_and_broken_ids_are_one_line(tmp_path):
    """COCO Annotator writes "iscrowd": false (pycocotools takes it); ids that are lists, and
    categories that are null or have no id, are one ValueError naming the file, not a traceback."""
    box, rng = (10, 10, 60, 40), np.random.default_rng(0)
    kps = keypoints_for(box, rng)
    ann_file, img_dir = simple_json(tmp_path / "a", anns=[annotation(11, 1, box, kps, iscrowd=False),
                                                          annotation(12, 1, box, kps, iscrowd=True)])
    ds = D.KeypointDataset(ann_file, img_dir, train=False)
    assert len(ds) == 1 and ds.coco.anns[12]["iscrowd"] == 1
    for sub, anns, cats, message in (
            ("b", [annotation(11, 1, box, kps, category_id=[1])], None, "refers to unknown category id"),
            ("c", [annotation(11, [1], box, kps)], None, "refers to unknown image id"),
            ("d", None, [category(), None], r"category #1 is not an object"),
            ("e", None, [category(), {"name": "cat"}], r"category #1 has no 'id'"),
            ("f", None, [category(), category()], r"duplicate category id\(s\) \[1\]")):
        ann_file, img_dir = simple_json(tmp_path / sub, anns=anns, categories=cats)
        with pytest.raises(ValueError, match=rf"ann\.json: .*{message}"):
            D.KeypointDataset(ann_file, img_dir, train=False)


def test_few_shot_draw_with_a_negative_category_id(tmp_path):
    box, rng = (10, 10, 60, 40), np.random.default_rng(0)
    kps = keypoints_for(box, rng)
    images = [(i, f"{i}.jpg", 100, 80, dot_image(100, 80, kps)) for i in (1, 2, 3)]
    anns = [annotation(10 + i, i, box, kps, category_id=-3 if i < 3 else 1) for i in (1, 2, 3)]
    ann_file, img_dir = simple_json(tmp_path, anns=anns, images=images,
                                    categories=[category(), category(cid=-3, name="cat")])
    ds = D.KeypointDataset(ann_file, img_dir, train=True, few_shot=(1, 0))
    assert len(ds.few_shot_image_ids) == 2 and 3 in ds.few_shot_image_ids
