"""Tests of predict.py, video.py and export.py: the search for the animal, own photos in COCO
results format, videos as a user runs them (--frames, --follow, --boxes, the DeepLabCut-layout
csv read back with pandas, the labelled video, one-line errors), and the exported program
against evaluate.py. A tiny synthetic AP-10K and a small random model (test_evaluate's
fixtures) keep it to seconds on a CPU."""
import json
import os
import shutil
import signal
import subprocess
import textwrap
import sys
import time

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from pycocotools.coco import COCO

import evaluate
import metrics
import export
import predict
import video
import visualize
from checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from dataset import KeypointDataset
from keypoints import AP10K_SIGMAS
from model import build_model, default_config
import test_evaluate
from test_evaluate import ENV, ROOT, assert_one_line_error, run

checkpoint, data = test_evaluate.checkpoint, test_evaluate.data  # its fixtures, shared


@pytest.fixture(scope="module")
def baseline(data, tmp_path_factory):
    """A small random SimpleBaseline (no text side) saved as train.py saves it."""
    cfg = default_config("imagenet-rn50", "baseline", small=True, image_size=(64, 64))
    ds = KeypointDataset(data["val"], data["images"], train=False, inputs=cfg)
    torch.manual_seed(0)
    model = build_model(cfg, ds.keypoint_names, ds.prompt_texts)
    info = {"flip_pairs": ds.flip_pairs, "skeleton": ds.skeleton, "sigmas": AP10K_SIGMAS}
    path = str(tmp_path_factory.mktemp("baseline") / "final.pt")
    save_checkpoint(path, make_checkpoint(model, info, {}, 0, -1.0, "0" * 40))
    return path


def write_clip(path, frames=6, size=(96, 64)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, size)
    for i in range(frames):
        frame = np.full((size[1], size[0], 3), 60, np.uint8)
        cv2.rectangle(frame, (10 + 8 * i, 15), (40 + 8 * i, 45), (0, 160, 255), -1)
        writer.write(frame)
    writer.release()


def count_frames(path):
    capture, n = cv2.VideoCapture(str(path)), 0
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    while capture.read()[0]:
        n += 1
    return n, size, capture.get(cv2.CAP_PROP_FPS)


# ----------------------------------------------------------------------------- the search
class WindowPredictor:
    """Stands in for predict.Predictor: a crop at most 200 px wide (the scale the "model" was
    trained at) that holds `target` sees the animal: keypoints on a 20 x 10 px body there,
    scores 0.9, 0.9, 0.1; any other crop gives its centre with score 0.05. Records the calls."""

    def __init__(self, target):
        self.target, self.asked = np.asarray(target, float), []

    def keypoints(self, images, boxes, flip=None):
        self.asked.append((len(boxes), flip))
        out = []
        for x, y, w, h in boxes:
            if w <= 200 and x <= self.target[0] <= x + w and y <= self.target[1] <= y + h:
                body = self.target + [[-10, -5], [10, 5], [0, 0]]
                out.append(np.c_[body, [0.9, 0.9, 0.1]])
            else:
                out.append(np.c_[np.tile([x + w / 2, y + h / 2], (3, 1)), [0.05] * 3])
        return np.array(out)


def test_search_windows_cover_the_image_and_find_a_small_animal():
    boxes = predict.search_windows(640, 480)
    assert boxes[0] == [0, 0, 640, 480] and len(boxes) == 1 + 5 * 3 + 7 * 5
    for side in (240, 160):  # each size spans the image edge to edge, overlapping by >= half
        grid = [b for b in boxes if b[2] == side]
        assert min(b[0] for b in grid) == 0 and max(b[0] + b[2] for b in grid) == 640
        assert max(b[1] + b[3] for b in grid) == 480
        xs = sorted({b[0] for b in grid})
        assert max(np.diff(xs)) <= side / 2
    image = np.zeros((480, 640, 3), np.uint8)
    finder = WindowPredictor([500, 100])
    box = predict.search(finder, [image])[0]
    # the body's sure keypoints (score >= 0.2) span 20 x 10 px; the box grows by 0.15 x 20 on
    # each side and is at least a quarter of the winning window (160 px -> 40 px) each way
    assert box == pytest.approx([480, 80, 40, 40])
    assert finder.asked == [(51, False)]                       # one coarse pass, no flip test
    poses = predict.find_poses(finder, [image, image], [None, [([0, 0, 50, 50], 0.5)]])
    assert [p[0]["box"] for p in poses] == ["search", "boxes"]
    assert poses[1][0]["score"] == 0.0 and finder.asked[-1] == (2, None)  # no keypoint > 0.2


def test_box_around_keeps_the_image_and_a_minimum_size():
    # the sure keypoints (score >= 0.2) span 20 x 10 px: + 0.15 x 20 px on every side
    kp = np.array([[10.0, 10, 0.9], [30, 20, 0.8], [300, 300, 0.1]])
    assert predict.box_around(kp, [0, 0, 40, 40], 100, 100) == pytest.approx([7, 7, 26, 16])
    # one sure keypoint: the best two span the box
    kp[1, 2], kp[2, 2] = 0.1, 0.05
    assert predict.box_around(kp, [0, 0, 40, 40], 100, 100) == pytest.approx([7, 7, 26, 16])
    # clipped to the image, as training boxes are
    assert predict.box_around(kp - [9, 9, 0], [0, 0, 40, 40], 100, 100) == pytest.approx(
        [0, 0, 24, 14])
    # the points coincide: at least a quarter of the reference box on each side
    assert predict.box_around(np.array([[50.0, 50, 1], [50, 50, 1]]), [0, 0, 80, 40], 100, 100) \
        == pytest.approx([40, 45, 20, 10])


def test_box_around_keeps_keypoints_outside_the_image_inside():
    """Sure keypoints in the crop's padding above the image: taken at its edge, so the box has
    area in the image (it had none: [240, 0, 160, -75]), as when the box is degenerate."""
    kp = np.array([[300.0, -150, 0.9], [340, -140, 0.8], [320, -120, 0.5]])
    assert predict.box_around(kp, [0, 0, 640, 480], 640, 480) == pytest.approx([240, 0, 160, 60])
    for shift in ([-1000, 0, 0], [0, 1000, 0], [1000, 1000, 0]):
        x, y, w, h = predict.box_around(kp + shift, [100, 100, 160, 160], 640, 480)
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 640 and y + h <= 480
    nan = np.array([[np.nan, np.nan, 0.9], [np.nan, np.nan, 0.8]])
    assert predict.box_around(nan, [100, 100, 160, 160], 640, 480) == [100, 100, 160, 160]


# ----------------------------------------------------------------------------- own photos
def test_own_photos_coco_results(checkpoint, data, tmp_path):
    """Own photos: COCO results that pycocotools reads, keypoint names once; photos with the
    same file name in two folders keep an overlay each; user boxes by the path as listed; the
    box used and how it was found are in every result."""
    files = sorted(os.listdir(data["images"]))
    for folder, name, source in (("a", "cat.jpg", files[0]), ("a", "dog.jpg", files[1]),
                                 ("b", "cat.jpg", files[2])):
        os.makedirs(tmp_path / folder, exist_ok=True)
        shutil.copy(os.path.join(data["images"], source), tmp_path / folder / name)
    json.dump([{"file_name": "b/cat.jpg", "bbox": [10, 20, 100, 80], "score": 0.5},
               {"file_name": "dog.jpg", "bbox": [50, 50, 60, 60]}], open(tmp_path / "boxes.json", "w"))
    run([checkpoint, "--images", "a", "b", "--output-dir", "out", "--vis-names"], cwd=tmp_path)
    out = tmp_path / "out"
    assert sorted(os.listdir(out / "vis")) == ["cat_1_pose.png", "cat_3_pose.png", "dog_pose.png"]
    images = json.load(open(out / "photo_images.json"))
    assert images["categories"][0]["keypoints"][:2] == ["left_eye", "right_eye"]
    assert [im["file_name"] for im in images["images"]] == ["a/cat.jpg", "a/dog.jpg", "b/cat.jpg"]
    results = json.load(open(out / "photo_results.json"))
    assert [r["image_id"] for r in results] == [1, 2, 3] and len(results[0]["keypoints"]) == 51
    assert {r["box"] for r in results} == {"search"}
    assert all(0 <= x <= 319 and 0 <= y <= 239 for r in results
               for x, y in np.reshape(r["keypoints"], (-1, 3))[:, :2])
    gt = COCO()
    gt.dataset = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 320, "height": 240}
                             for i in (1, 2, 3)],
                  "annotations": [], "categories": images["categories"]}
    gt.createIndex()
    assert len(gt.loadRes(str(out / "photo_results.json")).anns) == 3       # any COCO tool reads it
    assert len(COCO(str(out / "photo_images.json")).loadRes(str(out / "photo_results.json")).anns) == 3

    run([checkpoint, "--images", "a", "b", "--boxes", "boxes.json", "--output-dir", "out"],
        cwd=tmp_path)
    results = json.load(open(tmp_path / "out-2" / "photo_results.json"))
    assert [(r["file_name"], r["bbox"], r["score"] <= 0.5, r["box"]) for r in results
            if r["image_id"] == 3] == [("b/cat.jpg", [10, 20, 100, 80], True, "boxes")]
    assert [r["image_id"] for r in results] == [2, 3]                         # boxes given: only those
    run([checkpoint, "--images", "a", "--whole-frame", "--output-dir", "out"], cwd=tmp_path)
    results = json.load(open(tmp_path / "out-3" / "photo_results.json"))
    assert [(r["bbox"], r["box"]) for r in results] == [([0, 0, 320, 240], "whole")] * 2


def test_photo_and_video_boxes_are_checked(tmp_path, capsys):
    photos = [{"file_name": "a/cat.jpg", "width": 100, "height": 50},
              {"file_name": "b/cat.jpg", "width": 100, "height": 50}]
    path = tmp_path / "boxes.json"

    def check(entries, *needles):
        path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
        with pytest.raises(ValueError) as e:
            predict.photo_boxes(str(path), photos)
        for needle in ("boxes.json", *needles):
            assert needle in str(e.value), (needle, str(e.value))

    check([{"file_name": "cat.jpg", "bbox": [0, 0, 10, 10]}], "entry 0", "several photos")
    check([{"file_name": "a/cat.jpg", "bbox": [0, 0, 10, 10]}, {"file_name": "c/dog.jpg",
                                                                "bbox": [0, 0, 10, 10]}],
          "entry 1", "'c/dog.jpg'", "no such photo")
    check('[{"file_name": "a/cat.jpg", "bbox": [0, NaN, 10, 10]}]', "entry 0", "finite")
    check([{"file_name": "a/cat.jpg", "bbox": [0, 0, "10", 10]}], "not a number")
    check([{"file_name": "a/cat.jpg", "bbox": [0, 0, 0, 10]}], "positive")
    check([{"file_name": "a/cat.jpg", "bbox": [100, 0, 10, 10]}], "outside the 100x50 image")
    check([{"file_name": "a/cat.jpg", "bbox": [0, 0, 10, 10], "score": -1}], "'score'")
    check("{}", "non-empty json list")
    path.write_text(json.dumps([{"file_name": "b/cat.jpg", "bbox": [-5, 0, 10, 10]}]))
    assert predict.photo_boxes(str(path), photos) == {1: [([-5.0, 0.0, 10.0, 10.0], 1.0)]}
    path.write_text(json.dumps([{"frame": 2, "bbox": [0, 0, 10, 10]}, {"frame": 2.0, "bbox": [0, 0, 1, 1]}]))
    with pytest.raises(ValueError, match="entry 1 .*integer"):
        video.video_boxes(str(path), 100, 50, 0, 10)
    # entries outside the frames run are said, not dropped silently
    path.write_text(json.dumps([{"frame": f, "bbox": [0, 0, 10, 10]} for f in (1, 3, 7, 20)]))
    assert video.video_boxes(str(path), 100, 50, 2, 8) == {3: [([0.0, 0.0, 10.0, 10.0], 1.0)],
                                                            7: [([0.0, 0.0, 10.0, 10.0], 1.0)]}
    assert "2 box(es) for frames outside the frames run (2:8) not used (frames 1..20)" in \
        capsys.readouterr().out


def test_photo_boxes_several_animals_in_one_photo(tmp_path):
    """Several --boxes entries for one photo, by the same name or by others: a box each."""
    photos = [{"file_name": "a/cat.jpg", "width": 100, "height": 50},
              {"file_name": "b/dog.jpg", "width": 100, "height": 50}]
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps([
        {"file_name": "dog.jpg", "bbox": [0, 0, 10, 10]},
        {"file_name": "dog.jpg", "bbox": [20, 0, 10, 10], "score": 0.5},
        {"file_name": "b/dog.jpg", "bbox": [1, 1, 5, 5]},
        {"file_name": "b/dog.jpg", "bbox": [2, 2, 5, 5]},
        {"file_name": os.path.abspath("b/dog.jpg"), "bbox": [3, 3, 5, 5]}]))
    assert predict.photo_boxes(str(path), photos) == {1: [
        ([0.0, 0.0, 10.0, 10.0], 1.0), ([20.0, 0.0, 10.0, 10.0], 0.5),
        ([1.0, 1.0, 5.0, 5.0], 1.0), ([2.0, 2.0, 5.0, 5.0], 1.0), ([3.0, 3.0, 5.0, 5.0], 1.0)]}


def test_photo_boxes_take_the_path_as_listed_before_a_bare_name(tmp_path):
    """"cat.jpg" as listed is that photo, though "b/cat.jpg" has the same bare name; a bare
    name that fits two photos and is neither's path is refused."""
    photos = [{"file_name": "cat.jpg", "width": 100, "height": 50},
              {"file_name": "b/cat.jpg", "width": 100, "height": 50}]
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps([{"file_name": "cat.jpg", "bbox": [0, 0, 10, 10]},
                                {"file_name": os.path.abspath("cat.jpg"), "bbox": [1, 1, 5, 5]},
                                {"file_name": "b/cat.jpg", "bbox": [2, 2, 5, 5]}]))
    assert predict.photo_boxes(str(path), photos) == {
        0: [([0.0, 0.0, 10.0, 10.0], 1.0), ([1.0, 1.0, 5.0, 5.0], 1.0)],
        1: [([2.0, 2.0, 5.0, 5.0], 1.0)]}
    photos[0]["file_name"] = "a/cat.jpg"                      # "cat.jpg" now only a bare name
    path.write_text(json.dumps([{"file_name": "cat.jpg", "bbox": [0, 0, 10, 10]}]))
    with pytest.raises(ValueError, match="several photos; give the path as listed"):
        predict.photo_boxes(str(path), photos)


def test_overlay_names_never_clash():
    """Two photos sharing a stem get their image id, and where that is a real photo's name
    (cat_1.jpg), or names differ in letter case only, a number more: one overlay each."""
    photos = [{"id": i + 1, "file_name": f} for i, f in enumerate(
        ["a/cat.jpg", "b/cat.jpg", "cat_1.jpg", "cat_1_2.png", "x/Dog.jpg", "y/dog.png", "c.jpg"])]
    names = predict.overlay_names(photos)
    assert len({n.lower() for n in names}) == len(names)
    assert names == [os.path.join("vis", n) for n in (
        "cat_1_3_pose.png", "cat_2_pose.png", "cat_1_pose.png", "cat_1_2_pose.png",
        "Dog_5_pose.png", "dog_6_pose.png", "c_pose.png")]
    photos = [{"id": 1, "file_name": "a/cat.jpg"}, {"id": 2, "file_name": "a/dog.jpg"},
              {"id": 3, "file_name": "b/cat.jpg"}]                  # as before where none clash
    assert predict.overlay_names(photos) == [os.path.join("vis", n) for n in (
        "cat_1_pose.png", "dog_pose.png", "cat_3_pose.png")]


def test_a_run_failing_on_its_input_keeps_no_output_dir(checkpoint, data, tmp_path):
    """Bad --boxes, --images or --video: the output directory is given back (removed), so the
    next run writes there, not to DIR-2."""
    photo = os.path.join(data["images"], sorted(os.listdir(data["images"]))[0])
    json.dump([{"file_name": "none.jpg", "bbox": [0, 0, 9, 9]}], open(tmp_path / "b.json", "w"))
    os.makedirs(tmp_path / "mine")
    cases = [(["--images", photo, "--boxes", str(tmp_path / "b.json")], "no such photo"),
             (["--images", str(tmp_path / "none.jpg")], "neither a file"),
             (["--video", str(tmp_path / "none.mp4")], "no such file")]
    for flags, message in cases:
        for out in (tmp_path / "new" / "deeper" / "out", tmp_path / "mine"):
            args = evaluate.get_args_parser().parse_args([checkpoint, *flags, "--output-dir",
                                                          str(out)])
            with pytest.raises((ValueError, OSError), match=message):
                evaluate.main(args)
        assert not (tmp_path / "new" / "deeper" / "out").exists()
        assert not (tmp_path / "mine").exists()
    args = evaluate.get_args_parser().parse_args([checkpoint, "--images", photo, "--output-dir",
                                                  str(tmp_path / "mine")])
    evaluate.main(args)
    assert "photo_results.json" in os.listdir(tmp_path / "mine")
    assert not (tmp_path / "mine-2").exists()


# ----------------------------------------------------------------------------- video
def read_csv(path, rows):
    return pd.read_csv(path, header=list(range(rows)), index_col=0)


def test_video_search_frames_csv_and_figures(checkpoint, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    out = tmp_path / "out"
    proc = run([checkpoint, "--video", str(clip), "--frames", "1:5", "--batch-size", "3",
                "--output-dir", str(out)])
    assert "4 frames in" in proc.stdout and "frames/s" in proc.stdout
    assert count_frames(out / "clip_pose.mp4") == (4, (96, 64), 12.0)       # frames run = frames out
    keypoints = json.load(open(out / "clip_keypoints.json"))
    assert keypoints["keypoint_names"][0] == "left_eye" and keypoints["frames"] == 4
    assert [f["frame"] for f in keypoints["predictions"]] == [1, 2, 3, 4]
    instances = [f["instances"] for f in keypoints["predictions"]]
    assert all(len(i) == 1 and i[0]["box"] == "search" and len(i[0]["bbox"]) == 4 for i in instances)
    table = read_csv(out / "clip_keypoints.csv", 3)
    assert list(table.columns.names) == ["scorer", "bodyparts", "coords"]
    assert list(table.index) == [1, 2, 3, 4] and table.shape == (4, 17 * 3)
    assert list(table.columns.get_level_values(1)[::3]) == keypoints["keypoint_names"]
    x, y = table.xs("x", level=2, axis=1).values, table.xs("y", level=2, axis=1).values
    likelihood = table.xs("likelihood", level=2, axis=1).values
    assert np.isfinite(table.values).all() and ((0 <= x) & (x <= 95)).all() and ((0 <= y) & (y <= 63)).all()
    assert ((0 <= likelihood) & (likelihood <= 1)).all()
    first = np.reshape(instances[0][0]["keypoints"], (-1, 3))
    assert table.iloc[0, :2].tolist() == pytest.approx(first[0, :2], abs=0.01)
    figure = cv2.imread(str(out / "clip_trajectories.png"))
    assert figure is not None and figure.shape[0] > 64
    assert sorted(os.listdir(out)) == [".evaluation", "clip_keypoints.csv", "clip_keypoints.json",
                                       "clip_pose.mp4", "clip_trajectories.png"]  # no temporaries


def test_video_follow_boxes_and_several_animals(checkpoint, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    boxes = [{"frame": 1, "bbox": [5, 5, 40, 40], "score": 0.7}, {"frame": 4, "bbox": [10, 10, 30, 30]},
             {"frame": 4, "bbox": [50, 20, 40, 40], "score": 0.5}, {"frame": 9, "bbox": [0, 0, 9, 9]}]
    json.dump(boxes, open(tmp_path / "boxes.json", "w"))
    proc = run([checkpoint, "--video", str(clip), "--boxes", str(tmp_path / "boxes.json"),
                "--follow", "--frames", ":99", "--output-dir", str(tmp_path / "out")])
    assert "running 0:6" in proc.stdout                                      # clipped, and said
    assert "1 box(es) for frames outside" in proc.stdout
    keypoints = json.load(open(tmp_path / "out" / "clip_keypoints.json"))
    found = [[i["box"] for i in f["instances"]] for f in keypoints["predictions"]]
    assert found[1] == ["boxes"] and found[4] == ["boxes", "boxes"]
    assert [i["bbox"] for i in keypoints["predictions"][4]["instances"]] == [[10, 10, 30, 30],
                                                                              [50, 20, 40, 40]]
    assert all(len(f) == 1 and f[0] in ("follow", "search") for n, f in enumerate(found)
               if n not in (1, 4))
    table = read_csv(tmp_path / "out" / "clip_keypoints.csv", 4)            # several animals
    assert list(table.columns.names) == ["scorer", "individuals", "bodyparts", "coords"]
    assert table.shape == (6, 2 * 17 * 3)
    second = table.xs("instance2", level=1, axis=1)
    assert second.iloc[4].notna().all() and second.drop(index=4).isna().all().all()


def test_a_stopped_video_run_leaves_nothing_half_written(checkpoint, tmp_path):
    """SIGTERM (kill, a job scheduler) mid-video: exit as Ctrl-C does, the temporary video removed."""
    clip, out = tmp_path / "clip.mp4", tmp_path / "out"
    write_clip(clip, frames=3000)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "evaluate.py"), checkpoint,
                             "--video", str(clip), "--batch-size", "1", "--output-dir", str(out)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not (out.exists() and any(".tmp." in name for name in os.listdir(out))):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)  # frames are being written
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in stdout, (stdout, stderr)
    assert "Traceback" not in stderr, stderr
    assert not out.exists()  # nothing written: the output directory is given back


def test_a_video_cut_by_a_file_size_limit_is_an_error_not_a_result(checkpoint, tmp_path):
    """OpenCV's writer says nothing of a full disk: the labelled video is read back before it is
    kept, so a truncated one is one line naming it, never a broken file reported as written."""
    clip, out = tmp_path / "clip.mp4", tmp_path / "out"
    write_clip(clip, frames=400, size=(320, 240))
    limit = textwrap.dedent(f"""
        import resource, runpy, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
        sys.argv = {["evaluate.py", checkpoint, "--video", str(clip), "--whole-frame",
                     "--output-dir", str(out)]!r}
        runpy.run_path({os.path.join(ROOT, "evaluate.py")!r}, run_name="__main__")
    """)
    proc = subprocess.run([sys.executable, "-c", limit], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: cannot write {out / 'clip_pose.mp4'} (disk full or a file size limit?)")
    assert not out.exists()  # no half-written video, no temporary file: the directory given back


def test_video_bad_input_gives_one_line(checkpoint, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    (tmp_path / "notes.mp4").write_text("not a video")
    cases = [(["--video", str(tmp_path / "none.mp4")], ["none.mp4", "no such file"]),
             (["--video", str(tmp_path / "notes.mp4")], ["notes.mp4", "cannot decode"]),
             (["--video", str(clip), "--frames", "4:2"], ["--frames 4:2", "empty or inverted"]),
             (["--video", str(clip), "--frames", "6:"], ["--frames 6:", "6 frames"])]
    for flags, needles in cases:
        assert_one_line_error(run([checkpoint, *flags, "--output-dir", str(tmp_path / "o")],
                                  check=False), *needles)
    for flags, message in ((["--video", "v.mp4", "--frames", "3:3"], "--frames 3:3: the range is empty"),
                           (["--video", "v.mp4", "--frames", "a:b"], "expected START:STOP"),
                           (["--video", "v.mp4", "--follow", "--whole-frame"], "choose one"),
                           (["--images", "a.jpg", "--follow"], "--follow are for --video")):
        with pytest.raises(ValueError, match=message):
            evaluate.check_flag_combination(evaluate.get_args_parser().parse_args(["c.pt", *flags]))


def test_dlc_csv_layout(tmp_path):
    """One animal: DeepLabCut's three header rows; the likelihood clipped to [0, 1]."""
    pose = {"keypoints": np.array([[1.234, 2.0, 1.2], [3.0, 4.0, -0.1]])}
    records = [{"frame": 7, "instances": [pose]}, {"frame": 8, "instances": []}]
    path = tmp_path / "a_keypoints.csv"
    video.write_dlc_csv(str(path), "PromptPose_x", ["nose", "tail"], records)
    table = read_csv(path, 3)
    assert table.columns.tolist() == [("PromptPose_x", n, c) for n in ("nose", "tail")
                                      for c in ("x", "y", "likelihood")]
    assert table.loc[7].tolist() == pytest.approx([1.23, 2.0, 1.0, 3.0, 4.0, 0.0])
    assert table.loc[8].isna().all()


def test_overlay_names_stay_inside_and_keypoints_have_their_colours():
    sides = ["left", "right", "centre", "centre", "left", "right"]
    colours = visualize.keypoint_colours(sides)
    assert len(set(colours)) == 6
    image = np.full((60, 80, 3), 255, np.uint8)             # a white arena
    pose = np.array([[2.0, 2, 0.9], [78, 58, 0.9], [40, 30, 0.9], [41, 30, 0.9], [40, 31, 0.1],
                     [5, 55, 0.9]])
    out = visualize.overlay(image, [pose], [], sides, 0.4, names=[f"kp{i}" for i in range(6)],
                            legend=False, boxes=[[10, 10, 50, 40]])
    assert out.shape == image.shape and tuple(out[30, 10]) != (255, 255, 255)   # the box
    taken = []
    for point in pose[:, :2]:                                 # every label lies inside the image
        u, v = visualize.place_label((30, 10), point, 3, taken, (80, 60))
        assert 0 <= u <= 50 and 0 <= v <= 50
    assert len({(u, v) for u, v, _, _ in taken}) == len(taken)             # and none on another
    nan = pose.copy()
    nan[0, :2] = np.nan                                       # a point without a position
    drawn = visualize.draw_pose(np.zeros((60, 80, 3), np.uint8), nan, [[0, 1]], sides, 0.4)
    assert drawn[58, 78].any() and not drawn[0:5, 0:5].any()  # the others drawn, it and its limb not


def test_a_keypoint_scored_at_the_cutoff_is_drawn():
    """draw_pose keeps a keypoint scoring at least the threshold, as the p-cutoff metrics and
    the trajectory figure keep it (README: keypoints scoring below --pcutoff are not drawn);
    one just below it, or with a NaN score, is not drawn."""
    pose = np.array([[10.0, 10, 0.4], [40, 10, np.nextafter(0.4, 0)], [70, 10, np.nan]])
    drawn = visualize.draw_pose(np.zeros((30, 80, 3), np.uint8), pose, [[0, 1], [1, 2]],
                                ["centre"] * 3, 0.4)
    assert drawn[10, 10].any() and not drawn[:, 30:].any()
    kept = metrics.pcutoff_errors(pose[None, :, :2], pose[None, :, :2], np.ones((1, 3), bool),
                                  pose[None, :, 2], 0.4)[1]
    assert kept.tolist() == [1, 0, 0]                          # the metrics keep the same one


def test_similarity_figure_shows_the_whole_column_title():
    """Fig. 2 with few keypoints: the x-axis title is drawn whole (its strip and the figure as
    wide as the text), not cut at the matrix's width ("prompt embeddin" with 4 keypoints)."""
    text = "prompt embedding E_n (columns)"
    w, h = visualize.text_size(text, 0.45)
    template = np.full((h + 8, w + 12, 3), 255, np.uint8)     # the title and a white margin
    visualize.put_text(template, text, (6, 5), 0.45)
    rng = np.random.default_rng(0)
    for K in (1, 2, 4, 17):
        figure = visualize.similarity_figure(rng.uniform(-1, 1, (K, K)),
                                             [f"kp{k}" for k in range(K)], np.ones(K, bool))
        found = cv2.matchTemplate(figure, template, cv2.TM_SQDIFF)
        y, x = np.unravel_index(found.argmin(), found.shape)
        assert (figure[y:y + template.shape[0], x:x + template.shape[1]] == template).all(), K


# ----------------------------------------------------------------------------- export
@pytest.mark.parametrize("method", ["checkpoint", "baseline"])
def test_export_matches_evaluate(method, data, tmp_path, request):
    """The exported program, loaded by torch alone in a fresh process, gives evaluate.py's
    keypoints on the synthetic val set (the boxes evaluate.py crops) to 0.01 px once clipped
    to the image (as the program and predict.py clip them), its scores to 1e-3 and its AP to
    0.01: of a PromptPose and of a SimpleBaseline (no prompts to fix)."""
    ckpt = load_checkpoint(request.getfixturevalue(method))
    program, flip = export.export(ckpt)
    path = tmp_path / "model.pt2"
    export.save(program, export.metadata(ckpt, flip), str(path))
    dataset = evaluate.evaluation_dataset(ckpt, data["val"], data["images"], None)
    crops = [{"file_name": r["path"], "boxes": [r["box"].tolist()]} for r in dataset.records]
    json.dump(crops, open(tmp_path / "boxes.json", "w"))
    code = ("import json, sys, cv2, torch\n"
            "extra = {'keypoints.json': ''}\n"
            "m = torch.export.load(sys.argv[1], extra_files=extra).module()\n"
            "out = [m(torch.from_numpy(cv2.imread(c['file_name'])[..., ::-1].copy()),\n"
            "         torch.tensor(c['boxes'], dtype=torch.float32))[0].tolist()\n"
            "       for c in json.load(open(sys.argv[2]))]\n"
            "print(json.dumps([json.loads(extra['keypoints.json'])['keypoint_names'], out]))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "boxes.json")],
                          cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    names, exported = json.loads(proc.stdout.splitlines()[-1])
    assert names == ckpt["keypoint_names"]

    model = predict.prepare_model(ckpt, torch.device("cpu"), False)
    predictions = evaluate.predict_dataset(model, dataset, batch_size=8, workers=0, flip=flip,
                                           amp="none", device=torch.device("cpu"))
    ours = np.array(exported)                                                  # (N, K, 3)
    theirs = np.array([np.reshape(r["keypoints"], (-1, 3)) for r in predictions])
    limits = [[r["image_width"] - 1, r["image_height"] - 1] for r in dataset.records]
    theirs[..., :2] = theirs[..., :2].clip(0, np.array(limits)[:, None])    # as predict.py
    assert np.abs(ours[..., :2] - theirs[..., :2]).max() < 0.01
    assert np.abs(ours[..., 2] - theirs[..., 2]).max() < 1e-3
    mine = [dict(r, keypoints=k.ravel().tolist(), score=float(predict.instance_scores(
        k[None, :, 2], [1.0])[0])) for r, k in zip(predictions, ours)]
    ap = [metrics.coco_keypoint_eval(dataset.coco, metrics.nms_per_image(p, dataset.sigmas),
                                      dataset.sigmas)[0]["AP"] for p in (predictions, mine)]
    assert abs(ap[0] - ap[1]) <= 0.01, ap


def test_exported_keypoints_are_clipped_to_the_image(checkpoint, data, tmp_path):
    """As predict.py clips the own photos' and videos' keypoints (x to [0, W - 1], y to
    [0, H - 1]), the exported program (saved and loaded back) clips them, at any image size:
    thin boxes along the edges, whose crops lie mostly outside the image, give the photos'
    keypoints."""
    ckpt = load_checkpoint(checkpoint)
    program, flip = export.export(ckpt)
    export.save(program, export.metadata(ckpt, flip), str(tmp_path / "model.pt2"))
    module = torch.export.load(str(tmp_path / "model.pt2")).module()
    dataset = evaluate.evaluation_dataset(ckpt, data["val"], data["images"], None)
    photo = cv2.imread(dataset.records[0]["path"])
    model = predict.prepare_model(ckpt, torch.device("cpu"), False)
    predictor = predict.Predictor.from_checkpoint(model, ckpt, flip, "none",
                                                  torch.device("cpu"), 8)
    for image in (photo, np.ascontiguousarray(photo[:photo.shape[0] * 2 // 3,
                                                    :photo.shape[1] // 2])):
        H, W = image.shape[:2]
        boxes = [[0, 0, W, 2], [0, H - 2, W, 2], [0, 0, 2, H], [W - 2, 0, 2, H]]
        raw = predictor.keypoints([image] * len(boxes), boxes)[..., :2]
        assert ((raw < 0) | (raw > [W - 1, H - 1])).any()     # unclipped, some lie outside
        poses = predict.find_poses(predictor, [image], [[(b, 1.0) for b in boxes]])[0]
        want = np.array([p["keypoints"] for p in poses])
        got = module(torch.from_numpy(image[..., ::-1].copy()),
                     torch.tensor(boxes, dtype=torch.float32)).numpy()
        assert (got[..., :2] >= 0).all() and (got[..., :2] <= [W - 1, H - 1]).all()
        assert np.abs(got[..., :2] - want[..., :2]).max() < 0.01
        assert np.abs(got[..., 2] - want[..., 2]).max() < 1e-3


def test_exported_decoding_is_eq1_of_transforms():
    """export.decode (torch) equals transforms.keypoints_from_heatmaps (numpy) everywhere,
    peaks on the edge rows and columns included, scores clipped to [0, 1]."""
    import export
    import transforms
    rng = np.random.default_rng(0)
    heatmaps = rng.random((6, 5, 16, 12)).astype(np.float32) * 1.2
    for n, (y, x) in enumerate([(0, 0), (1, 5), (8, 1), (15, 11), (7, 10), (14, 6)]):
        heatmaps[n, :, y, x] = 2.0                     # the peaks, edges and next-to-edges
    center, scale = rng.random((6, 2)) * 100, rng.random((6, 2)) * 50 + 20
    want = transforms.keypoints_from_heatmaps(heatmaps, center, scale)
    want[..., 2] = np.clip(want[..., 2], 0, 1)
    got = export.decode(torch.from_numpy(heatmaps), torch.tensor(center, dtype=torch.float32),
                        torch.tensor(scale, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
