"""Convert annotations made with other tools into the COCO keypoint files train.py reads.

    python convert.py dlc PROJECT_DIR OUT_DIR [--val-fraction F] [--seed 0] [--copy] [--margin 20]

`dlc` reads a DeepLabCut project (config.yaml, every labeled-data/*/CollectedData_*.csv) and
writes OUT_DIR/{train,val}.json and OUT_DIR/images/<video>/<frame>, by the README's rules.
Points are copied unchanged: DeepLabCut and dataset.py both put pixel centres at integer
coordinates. Every problem stops with one line naming the file, line, key or flag.
"""
import argparse
import csv
import glob
import io
import itertools
import math
import os
import posixpath
import shlex
import shutil
import sys

import cv2
import numpy as np
import yaml

from files import read_text, write_json

DEFAULT_VAL_FRACTION = 0.2      # when config.yaml has no TrainingFraction

# ---------------------------------------------------------------- DeepLabCut project
class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key written twice: PyYAML would keep the last one without
    a word, DeepLabCut's own reader (ruamel.yaml) refuses it too."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is written twice", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path):
    """A YAML file whose top level is a mapping -> dict."""
    try:
        raw = yaml.load(read_text(path), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark, context = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
        where = f"{path} line {mark.line + 1}" if mark else path
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if context and e.context:     # where an unclosed [ or quote began, often the mistake
            problem += f"; {e.context} at line {context.line + 1}"
        raise ValueError(f"{where}: not valid YAML ({problem})") from None
    if not isinstance(raw, dict):
        found = "nothing" if raw is None else f"a {type(raw).__name__}"
        raise ValueError(f"{path}: expected 'key: value' lines (Task: ...), found {found}")
    return raw


def _names(raw, key, path, required=True):
    """raw[key] as a list of distinct body part / individual names, or a clear error."""
    value = raw.get(key)
    if value is None and not required:
        return []
    if value is None:
        raise ValueError(f"{path}: required key '{key}' is missing (or empty)")
    if not isinstance(value, list):
        raise ValueError(f"{path}: '{key}' must be a list of names, found {value!r}")
    odd = [v for v in value if not isinstance(v, str)]
    if odd:                           # `- 12`, `- on`, `- ~`: a number, a boolean, nothing
        raise ValueError(f"{path}: '{key}' must be a list of names, found {odd[0]!r} in it: "
                         "write names in quotes")
    duplicates = sorted({v for v in value if value.count(v) > 1})
    if duplicates:
        raise ValueError(f"{path}: '{key}' lists {duplicates} more than once")
    return value


def read_dlc_config(project_dir):
    """config.yaml of a DeepLabCut project -> dict(task, scorer, multi, keypoints, individuals,
    unique, skeleton (0-based index pairs into keypoints), train_fraction, notes)."""
    path = os.path.join(project_dir, "config.yaml")
    if not os.path.isfile(path):
        found = "is not a file" if os.path.exists(path) else "not found"
        raise FileNotFoundError(f"{path} {found}: PROJECT_DIR must be a DeepLabCut project")
    raw = read_yaml(path)
    task, multi = raw.get("Task"), raw.get("multianimalproject")
    if task is None or task == "" or isinstance(task, (list, dict)):
        raise ValueError(f"{path}: required key 'Task' is missing (or empty)")
    if not (multi is None or isinstance(multi, bool)):
        raise ValueError(f"{path}: 'multianimalproject' must be true or false, found {multi!r}")
    keypoints = _names(raw, "multianimalbodyparts" if multi else "bodyparts", path)
    individuals = _names(raw, "individuals", path) if multi else [None]
    unique = _names(raw, "uniquebodyparts", path, required=False) if multi else []
    fraction = raw.get("TrainingFraction")     # DeepLabCut's share of frames for training
    if isinstance(fraction, list) and fraction:
        fraction = fraction[0]
    if fraction is not None and not (type(fraction) in (int, float) and 0 < fraction <= 1):
        raise ValueError(f"{path}: 'TrainingFraction' must be a list of fractions in (0, 1], "
                         f"found {raw['TrainingFraction']!r}")
    skeleton, notes = [], []
    pairs = raw.get("skeleton") or []
    for pair in pairs if isinstance(pairs, list) else [pairs]:
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(p, str) for p in pair)):
            raise ValueError(f"{path}: 'skeleton' entry {pair!r} is not a pair of body parts")
        if any(p in unique for p in pair):
            notes.append(f"skeleton link {pair[0]}-{pair[1]} uses a unique body part: left out")
            continue
        unknown = [p for p in pair if p not in keypoints]
        if unknown:
            raise ValueError(f"{path}: 'skeleton' link {pair!r}: {unknown[0]!r} is not a body part")
        skeleton.append([keypoints.index(pair[0]), keypoints.index(pair[1])])
    return {"task": str(task), "scorer": raw.get("scorer"), "multi": bool(multi),
            "keypoints": keypoints, "individuals": individuals, "unique": unique,
            "skeleton": skeleton, "train_fraction": fraction, "notes": notes}


def _csv_columns(rows, path, cfg):
    """Header rows of a csv, checked against config.yaml -> ({(individual or None, body part):
    (x column, y column)}, number of index columns)."""
    names = ["scorer", "individuals", "bodyparts", "coords"] if cfg["multi"] else \
        ["scorer", "bodyparts", "coords"]
    found = [r[0].strip() if r else "" for r in rows[:len(names)]]
    if found != names:
        raise ValueError(f"{path}: header rows {'/'.join(found)}, expected {'/'.join(names)} "
                         f"(config.yaml's multianimalproject: {str(cfg['multi']).lower()})")
    width = max(len(r) for r in rows[:len(names)])
    header = [[c.strip() for c in r] + [""] * (width - len(r)) for r in rows[:len(names)]]
    individual = header[1] if cfg["multi"] else [None] * width
    part, coord = header[-2], header[-1]
    n_index = next((j for j in range(1, width) if coord[j]), None)
    if n_index is None:
        raise ValueError(f"{path}: the coords row names no x / y column")
    columns = {}
    for j in range(n_index, width):
        if not part[j] and not coord[j]:
            continue                  # a trailing empty column
        if coord[j] not in ("x", "y"):
            raise ValueError(f"{path}: column {j + 1} has coords {coord[j]!r}, expected x or y")
        xy = columns.setdefault((individual[j], part[j]), {})
        if coord[j] in xy:            # two columns for one value: neither may silently win
            of = "" if individual[j] is None else f"{individual[j]} "
            raise ValueError(f"{path}: columns {xy[coord[j]] + 1} and {j + 1} are both "
                             f"{of}{part[j]} {coord[j]}: delete one of them")
        xy[coord[j]] = j
    for (who, name), xy in columns.items():
        if len(xy) != 2:
            raise ValueError(f"{path}: body part {name!r} needs one x and one y column")
    for who in dict.fromkeys(who for who, _ in columns):
        names = {name for w, name in columns if w == who}
        if cfg["multi"] and who == "single":
            wanted, key = set(cfg["unique"]), "uniquebodyparts"
        elif who in cfg["individuals"]:
            wanted = set(cfg["keypoints"])
            key = "multianimalbodyparts" if cfg["multi"] else "bodyparts"
        else:
            raise ValueError(f"{path}: individual {who!r} is not in config.yaml 'individuals' "
                             f"{cfg['individuals']}")
        if names != wanted:
            of = "" if who is None else f" of {who}"
            raise ValueError(f"{path}: body parts{of} do not match config.yaml '{key}': "
                             f"missing {sorted(wanted - names)}, extra {sorted(names - wanted)}")
    return {k: (v["x"], v["y"]) for k, v in columns.items()}, n_index


def _coordinate(row, j, where):
    """Float value of cell j (NaN for an empty / missing / NaN cell)."""
    cell = row[j].strip() if j < len(row) else ""
    if cell == "" or cell.lower() == "nan":
        return float("nan")
    try:
        value = float(cell)
    except ValueError:
        value = math.inf
    if not math.isfinite(value):
        raise ValueError(f"{where}: {cell!r} is not a coordinate (leave unlabeled cells empty)")
    return value


def read_dlc_csv(path, cfg):
    """One CollectedData csv -> list of frames {image, where, instances: {individual: (K, 2)
    array, NaN = missing}, unique: number of labeled unique body parts}."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        rows = list(reader)
    except csv.Error as e:
        raise ValueError(f"{path} line {reader.line_num}: not a valid csv file ({e})") from None
    columns, n_index = _csv_columns(rows, path, cfg)
    frames, n_header = [], 4 if cfg["multi"] else 3
    for line, row in enumerate(rows[n_header:], n_header + 1):
        if not any(c.strip() for c in row):
            continue
        where = f"{path} line {line}"
        index = "/".join(c.strip() for c in row[:n_index] if c.strip()).replace("\\", "/")
        if not index:
            raise ValueError(f"{where}: the frame index (first {n_index} column(s)) is empty")
        # one spelling per frame: `./labeled-data/v/a.png`, `labeled-data\v\a.png` and the
        # cells `labeled-data, v, a.png` are all `labeled-data/v/a.png`
        image = posixpath.normpath(index)
        instances = {who: np.array([[_coordinate(row, j, f"{where} ({part} {c})")
                                     for j, c in zip(columns[(who, part)], "xy")]
                                    for part in cfg["keypoints"]])                  # (K, 2)
                     for who in cfg["individuals"] if any(k[0] == who for k in columns)}
        unique = sum(not np.isnan([_coordinate(row, j, f"{where} ({part})")
                                   for j in columns[("single", part)]]).any()
                     for part in cfg["unique"] if ("single", part) in columns)
        frames.append({"image": image, "where": where, "instances": instances, "unique": unique})
    return frames


def read_dlc_labels(project_dir, cfg):
    """Every labeled-data/*/CollectedData_*.csv -> (frames sorted by image path, csv paths,
    number of rows that repeat a frame with the same labels)."""
    parts = ("labeled-data", "*", "CollectedData_*.csv")
    paths = sorted(glob.glob(os.path.join(glob.escape(project_dir), *parts)))
    if not paths:
        where = os.path.join(project_dir, *parts)
        raise FileNotFoundError(f"no labels found ({where}): label frames in DeepLabCut first")
    frames, repeats = {}, 0
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"{path} is not a file: rename or move that folder")
        for frame in read_dlc_csv(path, cfg):
            first = frames.setdefault(frame["image"], frame)
            if first is frame:
                continue
            same = (first["unique"] == frame["unique"]
                    and first["instances"].keys() == frame["instances"].keys()
                    and all(np.array_equal(xy, first["instances"][k], equal_nan=True)
                            for k, xy in frame["instances"].items()))
            if not same:
                raise ValueError(f"{frame['where']}: frame {frame['image']} is labeled "
                                 f"differently at {first['where']}: delete one of the two rows")
            repeats += 1
    return [frames[k] for k in sorted(frames)], paths, repeats

# ---------------------------------------------------------------- COCO files
def image_size(path, where):
    """(height, width) of an image file, read from the file itself."""
    if not os.path.isfile(path):
        found = "is not a file" if os.path.exists(path) else "not found"
        raise FileNotFoundError(f"{where}: image {path} {found}")
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{where}: cannot read image {path} (not an image, or corrupt)")
    return image.shape[:2]


def coco_instance(xy, width, height, margin):
    """One individual's keypoints (K, 2), NaN = missing -> (COCO fields, or None when no point
    is labeled, n_outside); points outside the image count as unlabeled."""
    inside = ((xy[:, 0] >= -0.5) & (xy[:, 0] <= width - 0.5) &
              (xy[:, 1] >= -0.5) & (xy[:, 1] <= height - 0.5))          # NaN compares False
    present = ~np.isnan(xy).any(axis=1)                                 # (K,)
    labeled, n_outside = present & inside, int((present & ~inside).sum())
    if not labeled.any():
        return None, n_outside
    keypoints = []
    for (x, y), v in zip(xy, labeled):
        keypoints += [float(x), float(y), 2] if v else [0.0, 0.0, 0]
    x0, y0 = np.maximum(xy[labeled].min(axis=0) - margin, 0.0)
    x1, y1 = np.minimum(xy[labeled].max(axis=0) + margin, [width, height])
    w, h = float(x1 - x0), float(y1 - y0)
    return {"keypoints": keypoints, "num_keypoints": int(labeled.sum()),
            "bbox": [float(x0), float(y0), w, h], "area": w * h, "iscrowd": 0}, n_outside


def split_frames(n, val_fraction, seed):
    """Seeded split of n frames -> sorted (train, val) indices; 1 <= len(val) <= n - 1."""
    if n < 2:
        raise ValueError(f"found {n} labeled frame(s); a train/val split needs at least 2")
    n_val = min(max(int(round(val_fraction * n)), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def build_coco(project_dir, frames, margin):
    """Frames -> (images [{id, file_name, width, height, source}], annotations per image, counts).
    Frames without a labeled point are left out (their image is not read)."""
    root = os.path.join(project_dir, "labeled-data")
    images, annotations, ann_ids = [], [], itertools.count(1)
    counts = {"empty": 0, "outside": 0, "unique": sum(f["unique"] for f in frames)}
    for frame in frames:
        instances = []
        if not all(np.isnan(xy).any(axis=1).all() for xy in frame["instances"].values()):  # labeled
            source = os.path.normpath(os.path.join(project_dir, frame["image"]))
            file_name = os.path.relpath(source, root).replace(os.sep, "/")
            if file_name.startswith("../"):
                raise ValueError(f"{frame['where']}: image {frame['image']} is not inside {root}")
            height, width = image_size(source, frame["where"])
            for xy in frame["instances"].values():
                ann, outside = coco_instance(xy, width, height, margin)
                counts["outside"] += outside
                if ann is not None:
                    instances.append(ann)
        if not instances:
            counts["empty"] += 1
            continue
        image_id = len(images) + 1     # ids follow the sorted file names, across both splits
        images.append({"id": image_id, "file_name": file_name, "width": int(width),
                       "height": int(height), "source": source})
        annotations.append([{"id": next(ann_ids), "image_id": image_id, "category_id": 1, **ann}
                            for ann in instances])
    return images, annotations, counts


def place_images(images, image_dir, copy):
    """Link (or copy) every frame to image_dir/<file_name>."""
    for image in images:
        target = os.path.join(image_dir, *image["file_name"].split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if copy:
            shutil.copy2(image["source"], target)
            continue
        try:
            os.symlink(os.path.abspath(image["source"]), target)
        except OSError as e:
            raise ValueError(f"cannot link {target} -> {image['source']} ({e.strerror}); "
                             "use --copy on file systems without symbolic links") from None

# ---------------------------------------------------------------- flags, OUT_DIR, entry point
def check_options(out_dir, val_fraction, seed, margin):
    """Refuse flags that would give wrong boxes or splits (NaN fails every comparison) and an
    OUT_DIR that is a file or holds a conversion (an unwritable one fails at makedirs)."""
    if not (math.isfinite(margin) and margin >= 1):  # a box around one point needs some width
        raise ValueError(f"--margin must be a finite number of pixels >= 1, got {margin}")
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1) (0: one val frame), got {val_fraction}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0 (numpy takes no negative seed), got {seed}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"OUT_DIR {out_dir} is a file: give a new or empty folder")
    existing = [p for p in ("train.json", "val.json", "images")
                if os.path.lexists(os.path.join(out_dir, p))]
    if existing:
        raise ValueError(f"{out_dir} already holds {', '.join(existing)}: choose a new OUT_DIR")


def convert_dlc(project_dir, out_dir, val_fraction=None, seed=0, copy=False, margin=20.0):
    """DeepLabCut project -> OUT_DIR/{train,val}.json and OUT_DIR/images; returns a summary."""
    check_options(out_dir, val_fraction, seed, margin)
    cfg = read_dlc_config(project_dir)
    fraction, source = cfg["train_fraction"], "--val-fraction"
    if val_fraction is None and fraction is None:
        val_fraction, source = DEFAULT_VAL_FRACTION, "default: config.yaml has no TrainingFraction"
    elif val_fraction is None:        # round: 1 - 0.8 is 0.19999999999999996
        val_fraction = round(1 - fraction, 10)
        source = f"1 - TrainingFraction {fraction:g} of config.yaml"
    frames, csvs, repeats = read_dlc_labels(project_dir, cfg)
    images, annotations, counts = build_coco(project_dir, frames, margin)
    category = {"id": 1, "name": cfg["task"], "supercategory": "animal",
                "keypoints": cfg["keypoints"],
                "skeleton": [[a + 1, b + 1] for a, b in cfg["skeleton"]]}  # 1-based, as COCO
    info = {"description": f"DeepLabCut project '{cfg['task']}' converted by convert.py",
            "project": os.path.abspath(project_dir), "val_fraction": val_fraction, "seed": seed}
    train, val = split_frames(len(images), val_fraction, seed)
    files = {name: {"info": {**info, "split": name},
                    "images": [{k: images[i][k] for k in ("id", "file_name", "width", "height")}
                               for i in indices],
                    "annotations": [a for i in indices for a in annotations[i]],
                    "categories": [category]}
             for name, indices in (("train", train), ("val", val))}
    try:         # a path under a file, a read-only folder or mount, a full disk
        os.makedirs(out_dir, exist_ok=True)
        place_images(images, os.path.join(out_dir, "images"), copy)
        for name, data in files.items():
            write_json(os.path.join(out_dir, f"{name}.json"), data)
    except OSError as e:             # write_json's own error already names the file
        what = f"cannot write {e.filename}: {e.strerror}" if e.filename else str(e)
        raise ValueError(f"{what} (choose another OUT_DIR)") from None
    return {"cfg": cfg, "csvs": csvs, "frames": len(frames), "repeats": repeats,
            "counts": counts, "files": files, "val_fraction": (val_fraction, source), "seed": seed}


def print_report(summary, project_dir, out_dir, copy):
    """What was converted and left out, then the train.py commands to run next."""
    cfg, counts = summary["cfg"], summary["counts"]
    kind = (f"multi-animal ({len(cfg['individuals'])} individuals)" if cfg["multi"]
            else "single-animal")
    print(f"DeepLabCut project {project_dir}: Task {cfg['task']!r}, scorer {cfg['scorer']!r}, "
          f"{kind}, {len(cfg['keypoints'])} body parts: {', '.join(cfg['keypoints'])}")
    value, source = summary["val_fraction"]
    print(f"read {len(summary['csvs'])} csv file(s): {summary['frames']} frames; split with val "
          f"fraction {value:g} ({source}), seed {summary['seed']}")
    for name, data in summary["files"].items():
        anns = data["annotations"]
        print(f"  {os.path.join(out_dir, name + '.json')}: {len(data['images'])} frames, "
              f"{len(anns)} instances, {sum(a['num_keypoints'] for a in anns)} labeled keypoints")
    print(f"  {os.path.join(out_dir, 'images')}: frames {'copied' if copy else 'linked'}")
    if summary["repeats"]:
        print(f"note: {summary['repeats']} row(s) repeat a frame with the same labels: kept once")
    if counts["empty"]:
        print(f"note: {counts['empty']} frame(s) without any labeled point left out")
    if counts["outside"]:
        print(f"note: {counts['outside']} labeled point(s) outside their image marked unlabeled")
    if cfg["unique"]:
        print(f"note: unique body parts ({', '.join(cfg['unique'])}) are not animal keypoints: "
              f"{counts['unique']} labeled point(s) left out")
    for note in cfg["notes"]:
        print(f"note: {note}")
    out = {p: shlex.quote(os.path.join(out_dir, p)) for p in ("train.json", "val.json", "images")}
    run = "runs/" + "".join(c if c.isalnum() or c in "-_." else "_" for c in cfg["task"])
    data = f"--train-ann {out['train.json']} --val-ann {out['val.json']} --images {out['images']}"
    # train.py drops the last incomplete batch: a batch larger than the set trains nothing
    batch = min(16, len(summary["files"]["train"]["annotations"]))
    print("To try the pipeline (no downloaded weights: a small randomly initialised model, a "
          "schedule for a small set):")
    print(f"  torchrun --nproc_per_node=1 train.py {data} --backbone clip-rn50 --method promptpose "
          f"--small --random-init --input-size 128 --epochs 150 --warmup-iters 0 --lr-steps 120 "
          f"--lr 2e-3 --batch-size {batch} --output-dir {run}-try")
    print("To train for real (the body part names above become the text prompts) with OpenAI's "
          "CLIP weights RN50.pt (ViT-B-16.pt with --backbone clip-vitb16; the README's 'Real data "
          "and weights' says where to get them):")
    print(f"  torchrun --nproc_per_node=1 train.py {data} --backbone clip-rn50 --clip-weights "
          f"RN50.pt --output-dir {run}" + (f" --batch-size {batch}" if batch < 16 else ""))


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    tools = parser.add_subparsers(dest="tool", required=True, metavar="TOOL")
    dlc = tools.add_parser("dlc", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                           help="DeepLabCut project: config.yaml + labeled-data/*/*.csv")
    dlc.add_argument("project_dir", metavar="PROJECT_DIR", help="folder holding config.yaml")
    dlc.add_argument("out_dir", metavar="OUT_DIR", help="gets train.json, val.json and images/")
    dlc.add_argument("--val-fraction", type=float, default=None,
                     help="fraction of the labeled frames (not instances) that go to val.json; "
                     f"None: 1 - TrainingFraction of config.yaml, else {DEFAULT_VAL_FRACTION}")
    dlc.add_argument("--seed", type=int, default=0, help="seed of the frames' train/val split")
    dlc.add_argument("--copy", action="store_true", help="copy the frames instead of linking them")
    dlc.add_argument("--margin", type=float, default=20.0,
                     help="pixels added on every side of the keypoints' extent to make the box")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    summary = convert_dlc(args.project_dir, args.out_dir, val_fraction=args.val_fraction,
                          seed=args.seed, copy=args.copy, margin=args.margin)
    print_report(summary, args.project_dir, args.out_dir, args.copy)


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError) as e:    # every expected problem is one line, not a traceback
        sys.exit(f"error: {e}")
