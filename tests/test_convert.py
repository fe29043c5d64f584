"""convert.py dlc on small DeepLabCut projects built here, as DeepLabCut lays them out:
config.yaml in DeepLabCut's own layout, PNG frames drawn with cv2 in two videos, and
CollectedData csv files with 3 header rows (single animal) or 4 (multi-animal), the frame
index in one column or in three. The converted json is checked against the labels written
here; bad input of every kind must stop with one line naming the file, key or flag; the
printed weight-free training command runs one epoch through train.py."""
import json
import os
import shlex
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from convert import read_dlc_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
N = float("nan")
PARTS = ["snout", "leftear", "rightear", "tailbase"]

# TrainingFraction 0.8: 0.2 of the frames go to val.json, as in a project without it.
SINGLE_CONFIG = """\
    # Project definitions (do not edit)
Task: openfield
scorer: Tester
date: Jan1
multianimalproject: false
identity:

    # Project path (change when moving around)
project_path: {project}

    # Annotation data set configuration (and individual video cropping parameters)
video_sets:
  {project}/videos/video1.avi:
    crop: 0, 80, 0, 64
  {project}/videos/video2.avi:
    crop: 0, 96, 0, 72
bodyparts:
- snout
- leftear
- rightear
- tailbase

    # Fraction of video to start/stop when extracting frames for labeling/refinement
start: 0
stop: 1
numframes2pick: 20

    # Plotting configuration
skeleton:
- - snout
  - leftear
- - snout
  - rightear
- - leftear
  - tailbase
skeleton_color: black
pcutoff: 0.6
dotsize: 12
alphavalue: 0.7
colormap: rainbow

    # Training,Evaluation and Analysis configuration
TrainingFraction:
- 0.8
iteration: 0
default_net_type: resnet_50
default_augmenter: default
snapshotindex: -1
batch_size: 8

    # Refinement configuration (parameters from annotation dataset configuration also relevant in this stage)
corner2move2:
- 50
- 50
move2corner: true
"""

MULTI_CONFIG = """\
# Project definitions (do not edit)
Task: twomice
scorer: Tester
date: Jan1
multianimalproject: true
identity: false

# Project path (change when moving around)
project_path: {project}

# Annotation data set configuration (and individual video cropping parameters)
video_sets:
  {project}/videos/cage1.mp4:
    crop: 0, 160, 0, 120
individuals:
- mouse1
- mouse2
uniquebodyparts:
- feeder
multianimalbodyparts:
- snout
- leftear
- rightear
- tailbase
bodyparts: MULTI!

# Plotting configuration
skeleton: [[snout, leftear], [snout, rightear], [snout, tailbase], [feeder, snout]]
skeleton_color: black
pcutoff: 0.6
"""

# Hand-made labels: video -> (width, height, {frame: keypoints (K, 2), NaN = not labeled}).
SINGLE_LABELS = {
    "video1": (80, 64, {f"img{i:03d}.png": np.array(
        [[20 + 3 * i, 15.5 + i], [30.25 + i, 10 + 2 * i], [N, N] if i % 2 else [35, 20 + i],
         [40 + 2 * i, 50 - i]]) for i in range(6)}),
    "video2": (96, 72, {
        "img010.png": np.array([[10, 12], [20, 8], [22, 14], [60, 50]]),
        "img011.png": np.array([[50.5, 30.5], [N, N], [N, N], [N, N]]),     # one point
        "img012.png": np.array([[N, N], [N, N], [N, N], [N, N]]),           # nothing labeled
        "img013.png": np.array([[40, 20], [45, 25], [35, 25], [100.0, 30]]),  # tailbase outside
        "img014.png": np.array([[70, 60], [75, 55], [65, 55], [80, 10]]),
        "img015.png": np.array([[5, 5], [15, 5], [5, 15], [30, 30]]),
    }),
}
# Multi-animal: video -> (width, height, {frame: {individual: (K, 2)}, "feeder": (2,)}).
MULTI_LABELS = {
    "cage1": (160, 120, {
        "img000.png": {"mouse1": np.array([[50, 40], [55, 35], [N, N], [90, 60]]),
                       "mouse2": np.array([[120, 80], [125, 75], [115, 75], [140, 110]]),
                       "feeder": np.array([10, 10])},
        "img001.png": {"mouse1": np.array([[60, 50], [65, 45], [55, 45], [95, 70]]),
                       "mouse2": np.array([[N, N]] * 4),                   # not in this frame
                       "feeder": np.array([N, N])},
        "img002.png": {"mouse1": np.array([[N, N], [N, N], [N, N], [30, 30]]),
                       "mouse2": np.array([[100, 20], [N, N], [N, N], [130, 40]]),
                       "feeder": np.array([10, 11])},
    }),
    "cage2": (128, 96, {
        "img005.png": {"mouse1": np.array([[20, 20], [25, 15], [15, 15], [40, 60]]),
                       "mouse2": np.array([[100, 20], [105, 15], [95, 15], [110, 70]]),
                       "feeder": np.array([N, N])},
        "img006.png": {"mouse1": np.array([[30, 30], [N, N], [N, N], [50, 70]]),
                       "mouse2": np.array([[90, 50], [95, 45], [85, 45], [100, 90]]),
                       "feeder": np.array([5, 90])},
    }),
}


def cell(v):
    """A csv cell as DeepLabCut (pandas) writes it: empty for NaN."""
    return "" if np.isnan(v) else repr(float(v))


def draw_frame(path, width, height, points):
    """A PNG frame with a dot at every labeled point."""
    image = np.full((height, width, 3), (60, 110, 70), np.uint8)
    for x, y in points:
        if not np.isnan(x):
            cv2.circle(image, (int(round(x)), int(round(y))), 3, (230, 230, 230), -1)
    cv2.imwrite(str(path), image)


def write_csv(path, header, rows):
    with open(path, "w") as f:
        f.write("\n".join(",".join(r) for r in header + rows) + "\n")


def make_single_project(root):
    """Single animal: video1's csv has a one-column index, video2's (newer DeepLabCut) three."""
    project = root / "openfield-Tester-2024-01-01"
    (project / "labeled-data").mkdir(parents=True)
    (project / "config.yaml").write_text(SINGLE_CONFIG.format(project=project))
    for video, (w, h, frames) in SINGLE_LABELS.items():
        folder = project / "labeled-data" / video
        folder.mkdir()
        n_index = 1 if video == "video1" else 3
        pad = [""] * (n_index - 1)
        header = [["scorer", *pad] + ["Tester"] * 8,
                  ["bodyparts", *pad] + [p for p in PARTS for _ in "xy"],
                  ["coords", *pad] + ["x", "y"] * 4]
        rows = []
        for name, xy in frames.items():
            index = ([f"labeled-data/{video}/{name}"] if n_index == 1
                     else ["labeled-data", video, name])
            rows.append(index + [cell(v) for v in xy.ravel()])
            draw_frame(folder / name, w, h, xy)
        write_csv(folder / "CollectedData_Tester.csv", header, rows)
    return project


def make_multi_project(root):
    """Two individuals and a unique body part, three-column index, four header rows."""
    project = root / "twomice-Tester-2024-01-01"
    (project / "labeled-data").mkdir(parents=True)
    (project / "config.yaml").write_text(MULTI_CONFIG.format(project=project))
    columns = [(who, p) for who in ("mouse1", "mouse2") for p in PARTS] + [("single", "feeder")]
    for video, (w, h, frames) in MULTI_LABELS.items():
        folder = project / "labeled-data" / video
        folder.mkdir()
        header = [["scorer", "", ""] + ["Tester"] * 2 * len(columns),
                  ["individuals", "", ""] + [who for who, _ in columns for _ in "xy"],
                  ["bodyparts", "", ""] + [p for _, p in columns for _ in "xy"],
                  ["coords", "", ""] + ["x", "y"] * len(columns)]
        rows = []
        for name, labels in frames.items():
            values = np.concatenate([labels["mouse1"].ravel(), labels["mouse2"].ravel(),
                                     labels["feeder"]])
            rows.append(["labeled-data", video, name] + [cell(v) for v in values])
            draw_frame(folder / name, w, h, np.concatenate([labels["mouse1"], labels["mouse2"]]))
        write_csv(folder / "CollectedData_Tester.csv", header, rows)
    return project


def convert(project, out, *extra, check=True):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), "dlc", str(project),
                           str(out), *extra], capture_output=True, text=True, env=ENV, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"convert.py failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


def load(out):
    """train.json and val.json, merged: (category, {file_name: image}, {file_name: [anns]})."""
    images, anns, cats = {}, {}, []
    for split in ("train", "val"):
        data = json.loads((out / f"{split}.json").read_text())
        cats.append(data["categories"])
        by_id = {im["id"]: im for im in data["images"]}
        images.update({im["file_name"]: im for im in data["images"]})
        for a in sorted(data["annotations"], key=lambda a: a["id"]):
            anns.setdefault(by_id[a["image_id"]]["file_name"], []).append(a)
    assert cats[0] == cats[1] and len(cats[0]) == 1
    return cats[0][0], images, anns


def expected_instance(xy, width, height, margin):
    """COCO fields of one individual, written out independently of convert.py."""
    kps, xs, ys = [], [], []
    for x, y in xy:
        if np.isnan(x) or not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
            kps += [0, 0, 0]
        else:
            kps += [x, y, 2]
            xs.append(x)
            ys.append(y)
    x0, y0 = max(min(xs) - margin, 0), max(min(ys) - margin, 0)
    x1, y1 = min(max(xs) + margin, width), min(max(ys) + margin, height)
    return kps, [x0, y0, x1 - x0, y1 - y0]


def converted(root, make_project):
    """(project, OUT_DIR, convert.py's process) of a project made and converted under root."""
    project = make_project(root)
    return project, root / "coco", convert(project, root / "coco")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return converted(tmp_path_factory.mktemp("dlc"), make_single_project)


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    return converted(tmp_path_factory.mktemp("dlc_multi"), make_multi_project)


def test_single_animal_project(single):
    project, out, proc = single
    category, images, anns = load(out)
    assert category["name"] == "openfield" and category["supercategory"] == "animal"
    assert category["keypoints"] == PARTS
    assert category["skeleton"] == [[1, 2], [1, 3], [2, 4]]
    frames = {f"{v}/{f}" for v, (_, _, fr) in SINGLE_LABELS.items() for f in fr}
    assert set(images) == frames - {"video2/img012.png"}       # the unlabeled frame is left out
    assert len({im["id"] for im in images.values()}) == 11
    for video, (w, h, frames) in SINGLE_LABELS.items():
        for name, xy in frames.items():
            if name == "img012.png":
                continue
            file_name = f"{video}/{name}"
            assert (images[file_name]["width"], images[file_name]["height"]) == (w, h)
            (ann,) = anns[file_name]                           # one animal per frame
            kps, box = expected_instance(xy, w, h, 20)
            assert ann["keypoints"] == pytest.approx(kps) and ann["bbox"] == pytest.approx(box)
            assert ann["num_keypoints"] == sum(v == 2 for v in kps[2::3])
            assert ann["area"] == pytest.approx(box[2] * box[3]) and ann["iscrowd"] == 0
            assert ann["category_id"] == 1
    # Hand-computed: a single point grows into a 40 x 40 box; missing points are (0, 0, 0).
    one = anns["video2/img011.png"][0]
    assert one["keypoints"] == [50.5, 30.5, 2] + [0, 0, 0] * 3 and one["num_keypoints"] == 1
    assert one["bbox"] == [30.5, 10.5, 40.0, 40.0] and one["area"] == 1600.0
    # tailbase at x = 100 lies outside the 96-pixel-wide frame: unlabeled, box from the rest.
    outside = anns["video2/img013.png"][0]
    assert outside["keypoints"][9:] == [0, 0, 0] and outside["bbox"] == [15.0, 0.0, 50.0, 45.0]
    assert "1 labeled point(s) outside their image" in proc.stdout
    assert "1 frame(s) without any labeled point left out" in proc.stdout


def test_multi_animal_project(multi):
    project, out, proc = multi
    category, images, anns = load(out)
    assert category["name"] == "twomice" and category["keypoints"] == PARTS
    assert category["skeleton"] == [[1, 2], [1, 3], [1, 4]]     # feeder-snout link left out
    assert len(images) == 5
    n_instances = 0
    for video, (w, h, frames) in MULTI_LABELS.items():
        for name, labels in frames.items():
            file_name = f"{video}/{name}"
            assert (images[file_name]["width"], images[file_name]["height"]) == (w, h)
            present = [labels[m] for m in ("mouse1", "mouse2") if not np.isnan(labels[m]).all()]
            assert len(anns[file_name]) == len(present)        # one instance per individual
            for ann, xy in zip(anns[file_name], present):
                kps, box = expected_instance(xy, w, h, 20)
                assert ann["keypoints"] == pytest.approx(kps) and ann["bbox"] == pytest.approx(box)
            n_instances += len(present)
    assert n_instances == 9
    assert len({a["id"] for a_list in anns.values() for a in a_list}) == 9
    # Hand-computed box: keypoints span x 50..90, y 35..60, plus 20 px on every side.
    first = anns["cage1/img000.png"][0]
    assert first["bbox"] == [30.0, 15.0, 80.0, 65.0] and first["area"] == 80.0 * 65.0
    assert first["keypoints"][6:9] == [0, 0, 0] and first["num_keypoints"] == 3
    assert anns["cage1/img001.png"][0]["keypoints"][:3] == [60.0, 50.0, 2]
    assert "unique body parts (feeder)" in proc.stdout
    assert "3 labeled point(s) left out" in proc.stdout


def test_split_images_and_pycocotools(single, multi):
    for (project, out, proc), n_val, n_train, n_anns in ((single, 2, 9, 11), (multi, 1, 4, 9)):
        train, val = COCO(str(out / "train.json")), COCO(str(out / "val.json"))
        assert (len(train.imgs), len(val.imgs)) == (n_train, n_val)       # round(0.2 * frames)
        assert not set(train.imgs) & set(val.imgs)
        assert len(train.getAnnIds()) + len(val.getAnnIds()) == n_anns
        for im in [*train.imgs.values(), *val.imgs.values()]:
            link = out / "images" / im["file_name"]
            assert link.is_symlink()
            assert os.path.samefile(link, project / "labeled-data" / im["file_name"])
        assert f"{n_train} frames" in proc.stdout and "train.py --train-ann" in proc.stdout


def test_split_is_seeded(single, tmp_path):
    project, out, _ = single
    convert(project, tmp_path / "same")
    for name in ("train.json", "val.json"):                    # same seed -> same files
        assert (tmp_path / "same" / name).read_bytes() == (out / name).read_bytes()

    def val_names(d):
        return sorted(i["file_name"] for i in json.loads((d / "val.json").read_text())["images"])

    convert(project, tmp_path / "seed1", "--seed", "1")
    assert len(val_names(tmp_path / "seed1")) == 2
    assert val_names(tmp_path / "seed1") != val_names(out)
    convert(project, tmp_path / "half", "--val-fraction", "0.5")
    assert len(val_names(tmp_path / "half")) == 6                  # round(0.5 * 11)
    convert(project, tmp_path / "tiny", "--val-fraction", "0.01")  # never an empty side
    assert len(val_names(tmp_path / "tiny")) == 1
    convert(project, tmp_path / "huge", "--val-fraction", "0.99")
    assert len(val_names(tmp_path / "huge")) == 10


def test_copy_and_margin(single, tmp_path):
    project, _, _ = single
    out = tmp_path / "copied"
    proc = convert(project, out, "--copy", "--margin", "5")
    link = out / "images" / "video1" / "img000.png"
    assert not link.is_symlink()
    assert link.read_bytes() == (project / "labeled-data" / "video1" / "img000.png").read_bytes()
    _, _, anns = load(out)
    # video1/img000: x 20..40, y 10..50 -> grown by 5 px, inside the 80 x 64 frame.
    assert anns["video1/img000.png"][0]["bbox"] == [15.0, 5.0, 30.0, 50.0]
    assert "copied" in proc.stdout


CSV1 = "labeled-data/video1/CollectedData_Tester.csv"
CSV2 = "labeled-data/video2/CollectedData_Tester.csv"
MULTI_KEYS = ("multianimalproject: true\nindividuals: [a, b]\n"
              "multianimalbodyparts: [snout, leftear, rightear, tailbase]")
PARTS_BLOCK = "bodyparts:\n- snout\n- leftear\n- rightear\n- tailbase\n"
# case: (files (glob), text replaced (None: delete the files, b"": overwrite them), new text
#        (bytes: written as bytes, e.g. not UTF-8), what the one-line error must name)
BAD_INPUT = {
    "no config": ("config.yaml", None, None, ["config.yaml not found"]),
    "no bodyparts": ("config.yaml", "bodyparts:", "parts:",
                     ["config.yaml", "required key 'bodyparts'"]),
    "no Task": ("config.yaml", "Task: openfield", "Task:", ["config.yaml", "required key 'Task'"]),
    "bad skeleton": ("config.yaml", "  - tailbase", "  - tail",
                     ["config.yaml", "'skeleton'", "'tail'"]),
    "yaml syntax": ("config.yaml", "bodyparts:\n- snout", "bodyparts: [snout",
                    ["config.yaml line 23: not valid YAML",
                     "while parsing a flow sequence at line 17"]),
    "yaml key twice": ("config.yaml", "Task: openfield", "Task: openfield\nTask: other",
                       ["config.yaml line 3", "'Task' is written twice"]),
    "bodyparts not a list": ("config.yaml", PARTS_BLOCK, "bodyparts:\n  snout: 1\n",
                             ["config.yaml", "'bodyparts' must be a list of names"]),
    "bodypart read as a number": ("config.yaml", "- tailbase\n", "- 12\n",
                                  ["config.yaml", "'bodyparts'", "found 12 in it"]),
    "multianimalproject": ("config.yaml", "multianimalproject: false", "multianimalproject: 2",
                           ["config.yaml", "'multianimalproject' must be true or false"]),
    "TrainingFraction": ("config.yaml", "- 0.8\n", "- 1.5\n",
                         ["config.yaml", "'TrainingFraction'", "[1.5]"]),
    "config not UTF-8": ("config.yaml", "Tester", b"Test\xe9r",
                         ["config.yaml line 3", "not UTF-8"]),
    "no csv": ("labeled-data/*/*.csv", None, None, ["no labels found"]),
    "csv body parts": (CSV2, "leftear,leftear", "left_ear,left_ear",
                       [CSV2, "'bodyparts'", "missing ['leftear']", "extra ['left_ear']"]),
    "csv header": (CSV1, "coords,", "coordinates,", [CSV1, "scorer/bodyparts/coords"]),
    "csv header row short": (CSV1, ",tailbase,tailbase\n", "\n", [CSV1, "missing ['tailbase']"]),
    "csv column twice": (CSV1, "snout,snout,leftear,leftear", "snout,snout,snout,snout",
                         [CSV1, "columns 2 and 4 are both snout x"]),
    "csv not UTF-8": (CSV1, "snout", b"sn\xf6ut", [f"{CSV1} line 2", "not UTF-8"]),
    "not a number": (CSV1, "20.0,15.5", "20.0,abc", [f"{CSV1} line 4", "(snout y)", "'abc'"]),
    "same frame, other labels": (CSV1, "labeled-data/video1/img001.png",
                                 "./labeled-data/video1/img000.png",
                                 [f"{CSV1} line 5", "video1/img000.png", "labeled differently",
                                  f"{CSV1} line 4"]),
    "missing image": ("labeled-data/video2/img014.png", None, None,
                      [f"{CSV2} line 8", "img014.png not found"]),
    "unreadable image": ("labeled-data/video1/img002.png", b"", b"not a png",
                         [f"{CSV1} line 6", "cannot read image", "img002.png"]),
    "csv of the wrong kind": ("config.yaml", "multianimalproject: false", MULTI_KEYS,
                              [CSV1, "scorer/individuals/bodyparts/coords"]),
}


def assert_one_line_error(proc, *words):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_clear_line(case, tmp_path):
    project = make_single_project(tmp_path)
    pattern, old, new, words = BAD_INPUT[case]
    for path in project.glob(pattern):
        if old is None:
            path.unlink()
        elif isinstance(new, bytes):
            data = path.read_bytes()
            path.write_bytes(data.replace(old.encode(), new, 1) if old else new)
        else:
            path.write_text(path.read_text().replace(old, new, 1))
    proc = convert(project, tmp_path / "out", check=False)
    assert_one_line_error(proc, *words)
    assert not (tmp_path / "out").exists()


def test_bad_flags_and_existing_output(single, tmp_path):
    project, out, _ = single
    for args, word in ((["--val-fraction", "1.5"], "--val-fraction"),
                       (["--val-fraction", "1"], "--val-fraction"),
                       (["--val-fraction", "-0.1"], "--val-fraction"),
                       (["--val-fraction", "nan"], "--val-fraction"),
                       (["--val-fraction", "inf"], "--val-fraction"),
                       (["--margin", "-1"], "--margin"), (["--margin", "0"], "--margin"),
                       (["--margin", "nan"], "--margin"),
                       (["--margin", "inf"], "--margin"),
                       (["--seed", "-1"], "--seed")):
        proc = convert(project, tmp_path / "x", *args, check=False)
        assert_one_line_error(proc, word)
    assert not (tmp_path / "x").exists()
    proc = convert(project, out, check=False)                  # never overwrites a conversion
    assert_one_line_error(proc, "already holds train.json, val.json, images")


def test_out_dir_that_cannot_be_written(single, tmp_path):
    project, _, _ = single
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    assert_one_line_error(convert(project, a_file, check=False), f"OUT_DIR {a_file} is a file")
    # A folder that cannot be created. Tests run as root here, where a chmod 0o555 folder
    # stays writable, so a path under a file stands in for a read-only location.
    under = a_file / "sub"
    assert_one_line_error(convert(project, under, check=False), f"cannot write {under}",
                          "choose another OUT_DIR")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if not os.access(locked, os.W_OK):          # not root: the folder is read-only
            assert_one_line_error(convert(project, locked / "out", check=False),
                                  f"cannot write {locked / 'out'}", "Permission denied")
    finally:
        locked.chmod(0o755)


def test_paths_that_are_not_files(tmp_path):
    project = make_single_project(tmp_path)
    (project / "labeled-data" / "video1" / "CollectedData_x.csv").mkdir()
    assert_one_line_error(convert(project, tmp_path / "out", check=False),
                          "video1/CollectedData_x.csv is not a file", "rename or move")
    (project / "labeled-data" / "video1" / "CollectedData_x.csv").rmdir()
    (project / "labeled-data" / "video1" / "img003.png").unlink()
    (project / "labeled-data" / "video1" / "img003.png").mkdir()
    assert_one_line_error(convert(project, tmp_path / "out", check=False),
                          f"{CSV1} line 7", "img003.png is not a file")
    (project / "config.yaml").unlink()
    (project / "config.yaml").mkdir()
    assert_one_line_error(convert(project, tmp_path / "out", check=False),
                          "config.yaml is not a file")
    assert not (tmp_path / "out").exists()


def test_duplicated_csv_column_is_refused(tmp_path):
    """A second snout x/y pair appended to every row must not replace the first one."""
    project = make_single_project(tmp_path)
    path = project / CSV1
    rows = path.read_text().splitlines()
    extra = [",Tester,Tester", ",snout,snout", ",x,y"] + [",1.0,2.0"] * (len(rows) - 3)
    path.write_text("\n".join(r + e for r, e in zip(rows, extra)) + "\n")
    assert_one_line_error(convert(project, tmp_path / "out", check=False),
                          CSV1, "columns 2 and 10 are both snout x")


def test_same_frame_spelled_twice_is_one_image(single, tmp_path):
    """`./labeled-data/...`, a Windows path and the 3-column index name the frames of the
    1-column csv again, with the same labels: still 11 images, each once."""
    project = make_single_project(tmp_path)
    w, h, frames = SINGLE_LABELS["video1"]
    with open(project / CSV1, "a") as f:
        for index in ("./labeled-data/video1/img000.png", "labeled-data\\video1\\img001.png"):
            name = index.replace("\\", "/").split("/")[-1]
            f.write(",".join([index] + [cell(v) for v in frames[name].ravel()]) + "\n")
    header = [["scorer", "", ""] + ["Tester"] * 8,
              ["bodyparts", "", ""] + [p for p in PARTS for _ in "xy"],
              ["coords", "", ""] + ["x", "y"] * 4]
    write_csv(project / "labeled-data" / "video1" / "CollectedData_Other.csv", header,
              [["labeled-data", "video1", "img002.png"]
               + [cell(v) for v in frames["img002.png"].ravel()]])
    proc = convert(project, tmp_path / "out")
    assert "3 row(s) repeat a frame with the same labels: kept once" in proc.stdout
    _, images, anns = load(tmp_path / "out")
    _, images_once, anns_once = load(single[1])
    assert images == images_once and anns == anns_once


def test_val_fraction_from_training_fraction(single, multi, tmp_path):
    # The single-animal config has TrainingFraction [0.8], the multi-animal one none.
    assert "val fraction 0.2 (1 - TrainingFraction 0.8 of config.yaml)" in single[2].stdout
    assert "val fraction 0.2 (default: config.yaml has no TrainingFraction)" in multi[2].stdout
    project = make_single_project(tmp_path)
    config = project / "config.yaml"
    config.write_text(config.read_text().replace("- 0.8\n", "- 0.5\n- 0.9\n"))
    proc = convert(project, tmp_path / "half")
    assert "val fraction 0.5 (1 - TrainingFraction 0.5 of config.yaml)" in proc.stdout
    assert len(json.loads((tmp_path / "half" / "val.json").read_text())["images"]) == 6
    proc = convert(project, tmp_path / "flag", "--val-fraction", "0")   # the flag wins
    assert "val fraction 0 (--val-fraction)" in proc.stdout
    assert len(json.loads((tmp_path / "flag" / "val.json").read_text())["images"]) == 1


def test_config_yaml_read_with_pyyaml(tmp_path):
    """Quoted names (with '#', commas, quotes), comments, flow and block lists, a wrapped flow
    list and DeepLabCut's `? key` video_sets all reach the body parts and skeleton intact."""
    (tmp_path / "config.yaml").write_text(
        "    # comment\n"
        "Task: 'my task # not a comment'\n"
        "scorer: Tester's lab   # a comment\n"
        "multianimalproject:\n"
        "video_sets:\n"
        "  ? /videos/a.avi\n"
        "  : crop: 0, 640, 0, 480\n"
        "bodyparts:\n"
        "  - nose\n"
        "  - 'left ear'\n"
        "  - \"right, ear\"\n"
        "  - mouse's tail\n"
        "skeleton: [[nose, 'left ear'],\n"
        "  [nose, \"right, ear\"]]\n"
        "TrainingFraction: [0.95]\n")
    cfg = read_dlc_config(str(tmp_path))
    assert cfg["task"] == "my task # not a comment" and cfg["scorer"] == "Tester's lab"
    assert not cfg["multi"] and cfg["keypoints"] == ["nose", "left ear", "right, ear",
                                                     "mouse's tail"]
    assert cfg["skeleton"] == [[0, 1], [0, 2]] and cfg["train_fraction"] == 0.95


def test_printed_commands_run(single, tmp_path):
    """Both printed commands parse (paths shell-quoted: OUT_DIR has a space); the weight-free
    one trains one epoch through train.py."""
    project, _, _ = single
    out = tmp_path / "my coco"
    proc = convert(project, out)
    lines = [line.strip() for line in proc.stdout.splitlines() if "train.py" in line]
    try_it, real = [shlex.split(line) for line in lines]
    assert try_it[:3] == real[:3] == ["torchrun", "--nproc_per_node=1", "train.py"]
    for argv in (try_it, real):
        assert argv[argv.index("--train-ann") + 1] == str(out / "train.json")
        assert argv[argv.index("--images") + 1] == str(out / "images")
    assert "--random-init" in try_it and "--clip-weights" not in try_it
    assert real[real.index("--clip-weights") + 1] == "RN50.pt"
    assert "ViT-B-16.pt" in proc.stdout and "README's 'Real data and weights' says where" in proc.stdout
    # 9 training instances: a batch of 16 would leave train.py nothing to train on
    assert try_it[try_it.index("--batch-size") + 1] == real[real.index("--batch-size") + 1] == "9"
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, *try_it[2:], "--output-dir", str(run), "--input-size", "64",
         "--epochs", "1", "--workers", "0", "--eval-interval", "1"],
        cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run / "last.pt").is_file()
    # no OKS sigmas in a DeepLabCut project: best.pt is chosen by the val pixel error
    assert "has the best val_RMSE_px" in proc.stdout
    assert torch.load(run / "best.pt", weights_only=True)["selected_by"] == "val_RMSE_px"
