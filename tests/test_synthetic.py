"""Tests for synthetic.py: determinism, AP-10K format, keypoints on the drawn body, left/right."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import dataset as D
import keypoints as KP
import synthetic


def read_tree(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    synthetic.generate(str(tmp_path / "a"), 6, 3, seed=4)
    synthetic.generate(str(tmp_path / "b"), 6, 3, seed=4)
    synthetic.generate(str(tmp_path / "c"), 6, 3, seed=5)
    a, b, c = (read_tree(tmp_path / x) for x in "abc")
    assert len(a) == 9 + 2 and a == b  # every JPEG and both json files byte-identical
    assert a["annotations/ap10k-train-split1.json"] != c["annotations/ap10k-train-split1.json"]


def test_json_has_ap10k_structure(tmp_path):
    train_json, val_json = synthetic.generate(str(tmp_path), 40, 10, seed=0)
    train, val = json.load(open(train_json)), json.load(open(val_json))
    assert train["categories"] == val["categories"]
    families = {c["supercategory"] for c in train["categories"]}
    assert len(train["categories"]) >= 6 and len(families) >= 3
    for c in train["categories"]:
        assert c["keypoints"] == KP.AP10K_KEYPOINTS and c["skeleton"] == KP.AP10K_SKELETON
    image_ids = [im["id"] for im in train["images"] + val["images"]]
    ann_ids = [a["id"] for a in train["annotations"] + val["annotations"]]
    assert len(set(image_ids)) == 50 and len(set(ann_ids)) == len(ann_ids)
    images = {im["id"]: im for im in train["images"] + val["images"]}
    per_image = np.bincount([a["image_id"] for a in train["annotations"]])
    assert per_image.max() == 2  # some images hold two animals
    vis = []
    for a in train["annotations"] + val["annotations"]:
        kps = np.array(a["keypoints"]).reshape(17, 3)
        im = images[a["image_id"]]
        assert set(a) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "num_keypoints", "keypoints"}
        assert a["num_keypoints"] == (kps[:, 2] > 0).sum() and a["iscrowd"] == 0
        assert np.isclose(a["area"], a["bbox"][2] * a["bbox"][3])
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"]
        lab = kps[kps[:, 2] > 0]
        assert ((lab[:, 0] >= x - 1) & (lab[:, 0] <= x + w + 1) & (lab[:, 1] >= y - 1) & (lab[:, 1] <= y + h + 1)).all()
        assert (kps[kps[:, 2] == 0, :2] == 0).all()
        vis += kps[:, 2].tolist()
    vis = np.array(vis)
    assert 0.8 < (vis == 2).mean() < 0.99 and (vis == 1).any() and (vis == 0).any()
    for im in images.values():
        assert "background" in im and os.path.exists(os.path.join(tmp_path, "data", im["file_name"]))
    ds = D.KeypointDataset(train_json, os.path.join(tmp_path, "data"), train=True)
    assert ds.flip_pairs == KP.AP10K_FLIP_PAIRS and len(ds) == len(train["annotations"])
    item = ds.make_sample(0)  # the ground-truth box, no augmentation
    assert item["target_weight"].sum() == (np.array(train["annotations"][0]["keypoints"][2::3]) > 0).sum()


def test_keypoints_lie_on_the_drawn_body():
    on_mask, differs, total = 0, 0, 0
    for i in range(30):
        image, background, animals, _ = synthetic.render_image(np.random.default_rng([0, 9, i]))
        for a in animals:
            for x, y, v in a["keypoints"]:
                if v == 2:
                    xi, yi = int(round(x)), int(round(y))
                    total += 1
                    on_mask += a["mask"][yi, xi]
                    differs += np.abs(image[yi, xi].astype(int) - background[yi, xi]).sum() > 40
    assert total > 400
    assert on_mask == total              # every visible keypoint is on its animal's drawn body
    assert differs / total > 0.97        # and its pixel is not the background's


def test_left_and_right_are_geometric_so_flip_with_swap_is_consistent(tmp_path):
    """Left keypoints lie on the animal's left (seen from above, y down) of the tail->neck axis
    (eyes: of the neck->nose axis), in the drawn images and in the dataset's mirrored samples
    (flip folded into the warp, pairs swapped): flipped samples are valid animals."""
    def side(kps, k):  # > 0: keypoint k is on the animal's left
        a, b = (3, 2) if k in (0, 1) else (4, 3)     # neck -> nose, or root_of_tail -> neck
        f = kps[b, :2] - kps[a, :2]
        return (kps[k, :2] - kps[a, :2]) @ np.array([f[1], -f[0]])
    left_ids, right_ids = [0, 5, 6, 7, 11, 12, 13], [1, 8, 9, 10, 14, 15, 16]
    for i in range(20):
        _, _, animals, _ = synthetic.render_image(np.random.default_rng([1, 9, i]))
        for a in animals:
            assert all(side(a["xy"], k) > 0 for k in left_ids) and all(side(a["xy"], k) < 0 for k in right_ids)
    train_json, _ = synthetic.generate(str(tmp_path), 16, 0, seed=1)
    ds = D.KeypointDataset(train_json, os.path.join(tmp_path, "data"), train=True)
    checked = 0
    for i in range(len(ds)):
        for flip in (False, True):
            item = ds.make_sample(i, rot_deg=30.0, flip=flip)
            kps, labeled = item["keypoints"], item["target_weight"] > 0
            if not labeled[[2, 3, 4]].all():
                continue
            checked += 1
            assert all(side(kps, k) > 0 for k in left_ids if labeled[k])
            assert all(side(kps, k) < 0 for k in right_ids if labeled[k])
    assert checked > 16


def test_command_line(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "synthetic.py"), "--out", str(tmp_path), "--train", "3",
                          "--val", "2", "--seed", "1"], capture_output=True, text=True, check=True)
    assert "wrote 3 + 2 images" in out.stdout
    assert len(os.listdir(tmp_path / "data")) == 5
    assert json.load(open(tmp_path / "annotations" / "ap10k-val-split1.json"))["images"][0]["id"] == 4
