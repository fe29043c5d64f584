"""Convert annotations made with other tools into the COCO keypoint files train.py reads.

    python convert.py dlc PROJECT_DIR OUT_DIR [--val-fraction 0.2] [--seed 0] [--copy] [--margin 20]

`dlc` reads a DeepLabCut project: the body parts, skeleton and Task of its `config.yaml`
and the labels of every `labeled-data/*/CollectedData_*.csv` (single-animal: 3 header rows
scorer / bodyparts / coords; multi-animal: 4 rows scorer / individuals / bodyparts / coords;
the frame index in one column `labeled-data/video1/img001.png` or in three columns
`labeled-data, video1, img001.png`). It writes

    OUT_DIR/train.json, OUT_DIR/val.json   COCO keypoint format, one category named after Task
    OUT_DIR/images/<video>/<frame>         the labeled frames (symbolic links, or copies)

Rules (the README repeats them):
- keypoints are the body parts in config order (multi-animal: `multianimalbodyparts`);
  a labeled point is (x, y, 2), an empty / NaN cell (x, y, 0); coordinates are copied
  unchanged (DeepLabCut and dataset.py both put pixel centres at integer coordinates);
  a labeled point outside its image (x < -0.5 or x > width - 0.5, same for y) is unlabeled;
- one instance per individual per frame with at least one labeled point; its box is the
  keypoints' extent grown by `--margin` pixels on every side and clipped to the image;
  area = box width * height;
- `uniquebodyparts` of multi-animal projects (one per frame, e.g. a feeder) are not animal
  keypoints and are left out, with a printed count;
- frames without any labeled point are left out; the remaining frames are split, not the
  instances: a seeded permutation puts round(val_fraction * frames) of them (at least one,
  and at least one left for training) into val.json.
Image sizes come from the image files. Every problem stops with one line naming the file,
line or key (`error: ...`, exit status 1).
"""
import argparse
import csv
import glob
import json
import os
import shlex
import shutil
import sys

import cv2
import numpy as np

# ---------------------------------------------------------------- config.yaml (YAML subset)


def _strip_comment(line):
    """`line` without its `# comment`: a `#` at the start or after a blank, outside a quoted
    scalar (one that starts with a quote: `mouse's # nose` is `mouse's`)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"" and (i == 0 or line[i - 1] in " \t[,"):
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _yaml_scalar(text):
    """A plain or quoted YAML scalar -> str, or None for an empty value, `~` or `null`."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return json.loads(text)
    return None if text in ("", "~", "null", "Null", "NULL") else text


def _yaml_flow(text, where):
    """A flow sequence `[a, [b, c], 'd e']` (nesting allowed) -> nested lists of scalars."""
    def parse(i):  # text[i] == "[": returns (list, index after the closing "]")
        items, i, token = [], i + 1, ""
        while i < len(text):
            c = text[i]
            if c == "[":
                item, i = parse(i)
                items.append(item)
                token = None  # the item is already in `items`
                continue
            if c in ",]":
                if token is not None and token.strip():
                    items.append(_yaml_scalar(token))
                token = ""
                if c == "]":
                    return items, i + 1
            elif c in "'\"" and token is not None and not token.strip():
                end = text.find(c, i + 1)  # a quoted scalar, commas inside are kept
                if end < 0:
                    raise ValueError(f"{where}: unclosed quote in {text!r}")
                token = (token or "") + text[i:end + 1]
                i = end
            elif c == "{":
                raise ValueError(f"{where}: flow mappings {{...}} are not supported")
            elif token is not None:
                token += c
            elif not c.isspace():
                raise ValueError(f"{where}: unexpected '{c}' after a nested list")
            i += 1
        raise ValueError(f"{where}: unclosed '[' in {text!r}")

    value, end = parse(0)
    if text[end:].strip():
        raise ValueError(f"{where}: unexpected text after the list: {text[end:]!r}")
    return value


def _yaml_value(text, where):
    """The text after `key:` or `- `: a flow sequence or a scalar."""
    return _yaml_flow(text, where) if text.startswith("[") else _yaml_scalar(text)


def _yaml_block_list(items, pos, indent, where):
    """Block sequence of (indent, text) lines starting at items[pos] -> (list, next pos).

    Handles `- a`, `- [a, b]`, and the nested form DeepLabCut writes for the skeleton:
        - - snout        (a list whose first item is on the dash's line)
          - leftear
    """
    out = []
    while pos < len(items) and items[pos][0] == indent and items[pos][1].startswith("-"):
        rest = items[pos][1][1:]
        text = rest.lstrip()
        if text.startswith("-"):      # "- - a": a nested list starts on this line
            items[pos] = (indent + 1 + len(rest) - len(text), text)
            value, pos = _yaml_block_list(items, pos, items[pos][0], where)
        elif not text and pos + 1 < len(items) and items[pos + 1][0] > indent:
            value, pos = _yaml_block_list(items, pos + 1, items[pos + 1][0], where)
        else:
            value, pos = _yaml_value(text, where), pos + 1
        out.append(value)
    return out, pos


def read_yaml_subset(path, keys):
    """The top-level `keys` of a YAML file in the subset DeepLabCut writes -> {key: value}.

    Supported for those keys: `key: scalar`, `key: [flow, [nested], lists]` (also wrapped
    over several lines), block lists `- item` (nested `- - a` / `  - b`, items may be flow
    lists), comments and blank lines. Scalars stay strings (quotes removed); an empty value,
    `~` or `null` is None. Other keys (e.g. the `video_sets` mapping) are skipped unparsed;
    keys absent from the file are absent from the result.
    """
    with open(path, encoding="utf-8") as f:
        lines = [(n, _strip_comment(line.rstrip("\n"))) for n, line in enumerate(f, 1)]
    lines = [(n, line) for n, line in lines if line.strip()]
    starts = [i for i, (_, line) in enumerate(lines)
              if not line[0].isspace() and line[0] not in "-?" and ":" in line]
    out = {}
    for s, e in zip(starts, starts[1:] + [len(lines)]):
        n, line = lines[s]
        key, _, text = line.partition(":")
        if key.strip() not in keys:
            continue
        where = f"{path} line {n} ('{key.strip()}')"
        text = text.strip()
        body = lines[s + 1:e]
        if text.startswith("[") and body and text.count("[") > text.count("]"):
            text = " ".join([text] + [b.strip() for _, b in body])   # a wrapped flow list
            body = []
        if text:
            if body:
                raise ValueError(f"{where}: unexpected lines after the value (line {body[0][0]})")
            out[key.strip()] = _yaml_value(text, where)
            continue
        items = [(len(b) - len(b.lstrip()), b.strip()) for _, b in body]
        value, pos = _yaml_block_list(items, 0, items[0][0], where) if items else (None, 0)
        if pos != len(items):
            raise ValueError(f"{where}: only lists of names are understood here "
                             f"(line {body[pos][0]}: {body[pos][1].strip()!r})")
        out[key.strip()] = value
    return out


# ---------------------------------------------------------------- DeepLabCut project

def _names(raw, key, path, required=True):
    """raw[key] as a list of distinct body part / individual names, or a clear error."""
    value = raw.get(key)
    if value is None and not required:
        return []
    if key not in raw or value is None:
        raise ValueError(f"{path}: required key '{key}' is missing (or empty)")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{path}: '{key}' must be a list of names, found {value!r}")
    duplicates = sorted({v for v in value if value.count(v) > 1})
    if duplicates:
        raise ValueError(f"{path}: '{key}' lists {duplicates} more than once")
    return value


def read_dlc_config(project_dir):
    """config.yaml of a DeepLabCut project -> dict(task, scorer, multi, keypoints,
    individuals, unique, skeleton (0-based index pairs into keypoints), notes)."""
    path = os.path.join(project_dir, "config.yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: PROJECT_DIR must be a DeepLabCut project "
                                "folder (the one holding config.yaml and labeled-data/)")
    raw = read_yaml_subset(path, {"Task", "scorer", "multianimalproject", "bodyparts",
                                  "multianimalbodyparts", "uniquebodyparts", "individuals",
                                  "skeleton"})
    if not raw.get("Task"):
        raise ValueError(f"{path}: required key 'Task' is missing (or empty)")
    multi = str(raw.get("multianimalproject")).lower() in ("true", "yes", "on")
    if multi:
        keypoints = _names(raw, "multianimalbodyparts", path)
        individuals = _names(raw, "individuals", path)
        unique = _names(raw, "uniquebodyparts", path, required=False)
    else:
        keypoints, individuals, unique = _names(raw, "bodyparts", path), [None], []
    skeleton, notes = [], []
    for pair in raw.get("skeleton") or []:
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(p, str) for p in pair)):
            raise ValueError(f"{path}: 'skeleton' entries must be pairs of body parts, "
                             f"found {pair!r}")
        if any(p in unique for p in pair):
            notes.append(f"skeleton link {pair[0]}-{pair[1]} uses a unique body part: left out")
            continue
        unknown = [p for p in pair if p not in keypoints]
        if unknown:
            raise ValueError(f"{path}: 'skeleton' links {pair[0]}-{pair[1]}, but {unknown[0]!r} "
                             "is not one of the body parts")
        skeleton.append([keypoints.index(pair[0]), keypoints.index(pair[1])])
    return {"task": raw["Task"], "scorer": raw.get("scorer"), "multi": multi,
            "keypoints": keypoints, "individuals": individuals, "unique": unique,
            "skeleton": skeleton, "notes": notes}


def _csv_header(rows, path, multi):
    """Header rows of a CollectedData csv -> (individuals row or None, bodyparts row, coords
    row, number of index columns)."""
    expected = ["scorer", "individuals", "bodyparts", "coords"] if multi else \
        ["scorer", "bodyparts", "coords"]
    found = [r[0].strip() if r else "" for r in rows[:len(expected)]]
    if found != expected:
        kind = "a multi-animal" if multi else "a single-animal"
        raise ValueError(f"{path}: expected the header rows {'/'.join(expected)} of {kind} "
                         f"project (config.yaml), found {'/'.join(found)}")
    coords = rows[len(expected) - 1]
    first = next((j for j in range(1, len(coords)) if coords[j].strip()), None)
    if first is None:
        raise ValueError(f"{path}: the coords row names no x / y column")
    return (rows[1] if multi else None), rows[len(expected) - 2], coords, first


def _csv_columns(path, header, cfg):
    """{(individual, body part): (x column, y column)} of a csv, checked against config.yaml."""
    individuals_row, bodyparts_row, coords_row, n_index = header
    columns = {}
    for j in range(n_index, len(coords_row)):
        who = individuals_row[j].strip() if individuals_row is not None else None
        part, coord = bodyparts_row[j].strip(), coords_row[j].strip()
        if not part and not coord:
            continue                  # a trailing empty column
        if coord not in ("x", "y"):
            raise ValueError(f"{path}: column {j + 1} has coords {coord!r}, expected x or y")
        columns.setdefault((who, part), {})[coord] = j
    found = {}
    for (who, part), xy in columns.items():
        if len(xy) != 2:
            raise ValueError(f"{path}: body part {part!r} needs one x and one y column")
        found.setdefault(who, set()).add(part)
    for who, parts in found.items():
        if cfg["multi"] and who == "single":
            wanted, key = set(cfg["unique"]), "uniquebodyparts"
        elif who in cfg["individuals"]:
            wanted = set(cfg["keypoints"])
            key = "multianimalbodyparts" if cfg["multi"] else "bodyparts"
        else:
            raise ValueError(f"{path}: individual {who!r} is not in config.yaml 'individuals' "
                             f"{cfg['individuals']}")
        if parts != wanted:
            of = "" if who is None else f" of {who}"
            raise ValueError(f"{path}: body parts{of} do not match config.yaml '{key}': "
                             f"missing {sorted(wanted - parts)}, extra {sorted(parts - wanted)}")
    return {k: (v["x"], v["y"]) for k, v in columns.items()}, n_index


def _coordinate(row, j, where):
    """Float value of cell j (NaN for an empty / missing / NaN cell)."""
    cell = row[j].strip() if j < len(row) else ""
    if cell == "" or cell.lower() == "nan":
        return float("nan")
    try:
        value = float(cell)
    except ValueError:
        value = float("inf")
    if not np.isfinite(value):
        raise ValueError(f"{where}: {cell!r} is not a coordinate (leave the cell empty for a "
                         "point that is not labeled)")
    return value


def read_dlc_csv(path, cfg):
    """One CollectedData csv -> list of frames {image, where, instances: {individual: (K, 2)
    array, NaN = missing}, unique: number of labeled unique body parts}."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    header = _csv_header(rows, path, cfg["multi"])
    columns, n_index = _csv_columns(path, header, cfg)
    frames = []
    for line, row in enumerate(rows[4 if cfg["multi"] else 3:], 5 if cfg["multi"] else 4):
        if not any(c.strip() for c in row):
            continue
        where = f"{path} line {line}"
        image = "/".join(c.strip() for c in row[:n_index] if c.strip()).replace("\\", "/")
        if not image:
            raise ValueError(f"{where}: the frame index (first {n_index} column(s)) is empty")
        instances, unique = {}, 0
        for who in cfg["individuals"]:
            if any(k[0] == who for k in columns):
                instances[who] = np.array([[_coordinate(row, j, f"{where} ({part} {c})")
                                            for j, c in zip(columns[(who, part)], "xy")]
                                           for part in cfg["keypoints"]])       # (K, 2)
        for part in cfg["unique"]:
            if ("single", part) in columns:
                xy = [_coordinate(row, j, f"{where} ({part})") for j in columns[("single", part)]]
                unique += int(not np.isnan(xy).any())
        frames.append({"image": image, "where": where, "instances": instances, "unique": unique})
    return frames


def image_size(path, where):
    """(height, width) of an image file, read from the file itself."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: image {path} not found")
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{where}: cannot read image {path} (not an image, or corrupt)")
    return image.shape[:2]


def coco_instance(xy, width, height, margin):
    """One individual's keypoints (K, 2), NaN = missing -> (COCO fields or None, n_outside).

    Points outside the image become unlabeled (counted in n_outside); None when no point is
    left. Fields: keypoints [x, y, v] * K, num_keypoints, bbox = extent + margin clipped to
    the image [x, y, w, h], area = w * h, iscrowd 0.
    """
    inside = ((xy[:, 0] >= -0.5) & (xy[:, 0] <= width - 0.5) &
              (xy[:, 1] >= -0.5) & (xy[:, 1] <= height - 0.5))          # NaN compares False
    labeled = ~np.isnan(xy).any(axis=1) & inside                        # (K,)
    n_outside = int((~np.isnan(xy).any(axis=1) & ~inside).sum())
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
    """Seeded split of n frames -> (train indices, val indices), both sorted.

    val gets round(val_fraction * n) frames, but at least one and at most n - 1.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must lie strictly between 0 and 1, got {val_fraction}")
    if n < 2:
        raise ValueError(f"found {n} labeled frame(s); a train/val split needs at least 2")
    n_val = min(max(int(round(val_fraction * n)), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def read_dlc_labels(project_dir, cfg):
    """Every labeled-data/*/CollectedData_*.csv -> (frames sorted by image path, csv paths)."""
    pattern = os.path.join(glob.escape(project_dir), "labeled-data", "*", "CollectedData_*.csv")
    paths = sorted(glob.glob(pattern))
    if not paths:
        where = os.path.join(project_dir, "labeled-data", "*", "CollectedData_*.csv")
        raise FileNotFoundError(f"no labels found ({where}): label frames in DeepLabCut first "
                                "(it saves the csv next to the .h5)")
    frames = {}
    for path in paths:
        for frame in read_dlc_csv(path, cfg):
            if frame["image"] in frames:
                raise ValueError(f"{frame['where']}: frame {frame['image']} is labeled a second "
                                 f"time (first at {frames[frame['image']]['where']})")
            frames[frame["image"]] = frame
    return [frames[k] for k in sorted(frames)], paths


def build_coco(project_dir, frames, margin):
    """Frames -> (images [{file_name, width, height, source}], annotations per image, counts).

    Frames without a labeled point are left out (their image is not read).
    """
    root = os.path.join(project_dir, "labeled-data")
    images, annotations = [], []
    counts = {"empty": 0, "outside": 0, "unique": sum(f["unique"] for f in frames)}
    for frame in frames:
        if all(np.isnan(xy).any(axis=1).all() for xy in frame["instances"].values()):
            counts["empty"] += 1
            continue
        source = os.path.normpath(os.path.join(project_dir, frame["image"]))
        file_name = os.path.relpath(source, root).replace(os.sep, "/")
        if file_name.startswith("../"):
            raise ValueError(f"{frame['where']}: image {frame['image']} is not inside {root}")
        height, width = image_size(source, frame["where"])
        instances = []
        for xy in frame["instances"].values():
            ann, outside = coco_instance(xy, width, height, margin)
            counts["outside"] += outside
            if ann is not None:
                instances.append(ann)
        if not instances:
            counts["empty"] += 1
            continue
        images.append({"file_name": file_name, "width": int(width), "height": int(height),
                       "source": source})
        annotations.append(instances)
    return images, annotations, counts


def coco_file(images, annotations, indices, category, info):
    """The COCO keypoint dict of the frames `indices` (ids were assigned over all frames)."""
    return {"info": info,
            "images": [{k: images[i][k] for k in ("id", "file_name", "width", "height")}
                       for i in indices],
            "annotations": [a for i in indices for a in annotations[i]],
            "categories": [category]}


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
            raise ValueError(f"cannot link {target} -> {image['source']} ({e}); "
                             "use --copy on file systems without symbolic links") from e


def convert_dlc(project_dir, out_dir, val_fraction=0.2, seed=0, copy=False, margin=20.0):
    """DeepLabCut project -> OUT_DIR/{train,val}.json and OUT_DIR/images; returns a summary."""
    existing = [p for p in ("train.json", "val.json", "images")
                if os.path.lexists(os.path.join(out_dir, p))]
    if existing:
        raise ValueError(f"{out_dir} already holds {', '.join(existing)}: choose a new OUT_DIR "
                         "or delete them")
    if margin < 0:
        raise ValueError(f"--margin must be >= 0 pixels, got {margin}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must lie strictly between 0 and 1, got {val_fraction}")
    cfg = read_dlc_config(project_dir)
    frames, csvs = read_dlc_labels(project_dir, cfg)
    images, annotations, counts = build_coco(project_dir, frames, margin)
    train, val = split_frames(len(images), val_fraction, seed)
    ann_id = 0
    for i, image in enumerate(images):   # ids follow the sorted file names, across both splits
        image["id"] = i + 1
        for j, ann in enumerate(annotations[i]):
            ann_id += 1
            annotations[i][j] = {"id": ann_id, "image_id": i + 1, "category_id": 1, **ann}
    category = {"id": 1, "name": cfg["task"], "supercategory": "animal",
                "keypoints": cfg["keypoints"],
                "skeleton": [[a + 1, b + 1] for a, b in cfg["skeleton"]]}  # 1-based, as COCO
    os.makedirs(out_dir, exist_ok=True)
    place_images(images, os.path.join(out_dir, "images"), copy)
    splits = {}
    for name, indices in (("train", train), ("val", val)):
        info = {"description": f"DeepLabCut project '{cfg['task']}' converted by convert.py",
                "project": os.path.abspath(project_dir), "split": name,
                "val_fraction": val_fraction, "seed": seed}
        data = coco_file(images, annotations, indices, category, info)
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(data, f)
        splits[name] = (len(data["images"]), len(data["annotations"]),
                        sum(a["num_keypoints"] for a in data["annotations"]))
    return {"cfg": cfg, "csvs": csvs, "frames": len(frames), "counts": counts, "splits": splits}


def print_summary(summary, project_dir, out_dir, copy):
    """What was converted, what was left out, and the command to train on it."""
    cfg, counts = summary["cfg"], summary["counts"]
    kind = (f"multi-animal ({len(cfg['individuals'])} individuals)" if cfg["multi"]
            else "single-animal")
    print(f"DeepLabCut project {project_dir}: Task {cfg['task']!r}, scorer {cfg['scorer']!r}, "
          f"{kind}, {len(cfg['keypoints'])} body parts: {', '.join(cfg['keypoints'])}")
    print(f"read {len(summary['csvs'])} csv file(s): {summary['frames']} frames")
    for name, (frames, instances, points) in summary["splits"].items():
        print(f"  {os.path.join(out_dir, name + '.json')}: {frames} frames, {instances} "
              f"instances, {points} labeled keypoints")
    print(f"  {os.path.join(out_dir, 'images')}: frames {'copied' if copy else 'linked'}")
    if counts["empty"]:
        print(f"note: {counts['empty']} frame(s) without any labeled point left out")
    if counts["outside"]:
        print(f"note: {counts['outside']} labeled point(s) outside their image marked unlabeled")
    if cfg["unique"]:
        print(f"note: unique body parts ({', '.join(cfg['unique'])}) are not animal keypoints: "
              f"{counts['unique']} labeled point(s) left out")
    for note in cfg["notes"]:
        print(f"note: {note}")
    out = lambda p: shlex.quote(os.path.join(out_dir, p))  # noqa: E731
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in cfg["task"])
    print("Train on it (the body part names above become the text prompts):")
    print(f"  torchrun --nproc_per_node=1 train.py --train-ann {out('train.json')} --val-ann "
          f"{out('val.json')} --images {out('images')} --backbone clip-rn50 "
          f"--clip-weights RN50.pt --output-dir runs/{name}")


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tools = parser.add_subparsers(dest="tool", required=True, metavar="TOOL")
    dlc = tools.add_parser("dlc", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                           help="DeepLabCut project: config.yaml + labeled-data/*/*.csv")
    dlc.add_argument("project_dir", metavar="PROJECT_DIR",
                     help="DeepLabCut project folder (holds config.yaml)")
    dlc.add_argument("out_dir", metavar="OUT_DIR",
                     help="writes train.json, val.json and images/ here")
    dlc.add_argument("--val-fraction", type=float, default=0.2,
                     help="fraction of the labeled frames (not instances) that go to val.json")
    dlc.add_argument("--seed", type=int, default=0, help="seed of the frames' train/val split")
    dlc.add_argument("--copy", action="store_true", help="copy the frames instead of linking them")
    dlc.add_argument("--margin", type=float, default=20.0,
                     help="pixels added on every side of the keypoints' extent to make the box")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    summary = convert_dlc(args.project_dir, args.out_dir, val_fraction=args.val_fraction,
                          seed=args.seed, copy=args.copy, margin=args.margin)
    print_summary(summary, args.project_dir, args.out_dir, args.copy)


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
