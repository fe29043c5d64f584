"""A COCO-format keypoint json, read and checked in one pass, and the boxes in it.

The json: `images` [{id, file_name, width, height}], `annotations` [{id, image_id, category_id,
bbox [x, y, w, h], keypoints [x1, y1, v1, ...] (v 0 unlabeled, 1 occluded, 2 visible), optional
area (default w * h), iscrowd (default 0), num_keypoints (default: the labeled count)}],
`categories` [{id, name, keypoints [names], skeleton (1-based pairs)}]. Optional category fields:
`keypoint_prompts` (one text per keypoint, Eq. 2), `flip_pairs` (0-based index pairs or name
pairs), `sigmas` (one OKS sigma per keypoint). Detections for evaluation are COCO detection
results [{image_id, category_id, bbox, score}]. Every problem is one ValueError naming the file,
the id and the field."""
import contextlib
import io
import warnings
from collections import Counter

from pycocotools.coco import COCO

from files import finite_number, finite_numbers, integer_id, read_json
from keypoints import check_flip_pairs, check_sigmas


def load_coco_json(path):
    """Read a COCO json with errors that name the file (and line, for malformed json)."""
    data = read_json(path)
    lists = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in lists):
        raise ValueError(f"{path}: not a COCO file (needs lists 'images', 'annotations', 'categories')")
    return data


def unique_ids(items, kind, path):
    """Every image / annotation / category is an object with an integer id, none repeated."""
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: {kind} #{n} is not an object")
        extra = f" (image id {item.get('image_id')!r})" if kind == "annotation" else ""
        integer_id(item, "id", f"{path}: {kind} #{n}{extra}")
    dup = sorted(i for i, n in Counter(item["id"] for item in items).items() if n > 1)
    if dup:
        raise ValueError(f"{path}: duplicate {kind} id(s) {dup[:10]}")


def check_coco(data, path, keypoint_category_ids, num_keypoints):
    """One pass over the images and annotations: unique integer ids; images with a file_name and
    finite width / height >= 0 (0: their instances are skipped); annotations of a known image and
    category, and for keypoint categories 3K finite keypoint numbers and a finite bbox. Fills what
    COCOeval reads where the file leaves it out: area (bbox w * h), iscrowd (0), num_keypoints
    (the labeled count). A scored instance with a box needs area > 0."""
    unique_ids(data["images"], "image", path)
    unique_ids(data["annotations"], "annotation", path)
    unique_ids(data["categories"], "category", path)
    for im in data["images"]:
        where = f"{path}: image id {im['id']}"
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise ValueError(f"{where} needs a 'file_name'")
        for field in ("width", "height"):
            finite_number(im.get(field), where, field, minimum=0)
    images = {im["id"] for im in data["images"]}
    add_unlisted_categories(data, path, keypoint_category_ids, num_keypoints)
    categories = {c["id"] for c in data["categories"]}
    for ann in data["annotations"]:
        where = f"{path}: annotation id {ann['id']}"
        for key, known in (("image_id", images), ("category_id", categories)):
            if isinstance(ann.get(key), (list, dict)) or ann.get(key) not in known:
                raise ValueError(f"{where} refers to unknown {key[:-3]} id {ann.get(key)!r}")
        if ann["category_id"] not in keypoint_category_ids:
            continue
        kps = ann.get("keypoints")
        if not isinstance(kps, list) or len(kps) != 3 * num_keypoints:
            raise ValueError(f"{where} has {len(kps) if isinstance(kps, list) else 0} keypoint values, "
                             f"expected {3 * num_keypoints} ({num_keypoints} keypoints x [x, y, v])")
        labeled = int((finite_numbers(kps, len(kps), where, "keypoints")[2::3] > 0).sum())
        if not isinstance(ann.get("bbox"), list) or len(ann["bbox"]) != 4:
            raise ValueError(f"{where} has no 4-number bbox [x, y, w, h]")
        x, y, w, h = finite_numbers(ann["bbox"], 4, where, "bbox")
        ann["area"] = finite_number(ann.get("area", float(w * h)), where, "area", minimum=0)
        if type(ann.get("iscrowd")) is bool:  # a boolean field in some tools (COCO Annotator)
            ann["iscrowd"] = int(ann["iscrowd"])
        for field, default in (("iscrowd", 0), ("num_keypoints", labeled)):
            finite_number(ann.setdefault(field, default), where, field, minimum=0)
        if ann["area"] == 0 < min(w, h) and ann["num_keypoints"] > 0 and not ann["iscrowd"]:
            raise ValueError(f"{where}: 'area' is 0, and OKS divides by it (AP 0 for this instance)"
                             f": give the instance's area, or leave 'area' out to use the box's w * h")


def add_unlisted_categories(data, path, keypoint_category_ids, num_keypoints):
    """Keypoint annotations (3K keypoint values) of a category id the file does not list (as
    mmpose's Animal Kingdom sample) get a category of the file's one keypoint set, said once."""
    listed = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    unlisted = sorted({a.get("category_id") for a in data["annotations"] if type(a.get(
        "category_id")) is int and a["category_id"] not in listed and isinstance(a.get(
            "keypoints"), list) and len(a["keypoints"]) == 3 * num_keypoints})
    if not unlisted:
        return
    template = next(c for c in data["categories"] if c.get("id") in keypoint_category_ids)
    for cid in unlisted:
        data["categories"].append(dict(template, id=cid, name=f"category {cid}"))
        keypoint_category_ids.add(cid)
    warnings.warn(f"{path}: annotations of category id(s) {unlisted[:10]} that 'categories' does "
                  "not list: taken as instances of its keypoint set, named 'category <id>'")


def read_skeleton(skeleton, num_keypoints, path):
    """The limbs (0-based pairs) of a category's skeleton, 1-based as COCO writes it. A
    0-based one (an index 0 and none above K - 1, as mmpose's Animal Kingdom file) is used as
    it is, and said; an unusable one is dropped with a warning: the skeleton only draws."""
    K, pairs = num_keypoints, skeleton or []
    valid = isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 and all(
        type(v) is int for v in p) for p in pairs)
    values = [v for p in pairs for v in p] if valid else []
    if valid and (not values or (min(values) >= 1 and max(values) <= K)):
        return [[a - 1, b - 1] for a, b in pairs]
    if valid and min(values) == 0 and max(values) <= K - 1:
        warnings.warn(f"{path}: the skeleton is 0-based (it uses index 0); read as such")
        return [list(p) for p in pairs]
    warnings.warn(f"{path}: skeleton {str(skeleton)[:80]} is not pairs of keypoint indices in "
                  f"1..{K} (COCO skeletons are 1-based); dropped (it only draws figures)")
    return []


def category_field(cats, field, path):
    """An optional per-category field: None, or the value all keypoint categories giving it agree on."""
    given = [c for c in cats if field in c]
    for c in given[1:]:
        if c[field] != given[0][field]:
            raise ValueError(f"{path}: categories {given[0]['id']} and {c['id']} give different "
                             f"'{field}'; one model needs one value")
    return given[0][field] if given else None


def read_keypoint_set(data, path):
    """The categories' keypoint set -> dict(names, category_ids, skeleton (0-based pairs), and the
    optional json fields keypoint_prompts, flip_pairs, sigmas, validated; None when absent)."""
    cats = [c for c in data["categories"] if isinstance(c, dict) and c.get("keypoints")]
    if not cats:
        raise ValueError(f"{path}: no category lists 'keypoints'; not a keypoint file")
    for c in cats:
        integer_id(c, "id", f"{path}: category {c.get('name', '?')!r}")
    names = cats[0]["keypoints"]
    for c in cats[1:]:
        if c["keypoints"] != names:
            raise ValueError(f"{path}: categories {cats[0]['id']} and {c['id']} list "
                             "different keypoints; one model needs one keypoint set")
    if not all(isinstance(n, str) and n.strip() for n in names) or len(set(names)) != len(names):
        raise ValueError(f"{path}: category {cats[0]['id']} 'keypoints' must be distinct non-empty "
                         f"names, got {names}")
    K = len(names)
    spaced = [n for n in names if n != n.strip()]
    if spaced:
        warnings.warn(f"{path}: keypoint name(s) {spaced} have surrounding spaces; stripped for "
                      "the prompts and the left/right pairs (the names stay as the file has them)")
    prompts = category_field(cats, "keypoint_prompts", path)
    if prompts is not None and not (isinstance(prompts, list) and len(prompts) == K and all(
            isinstance(p, str) and p.strip() for p in prompts)):
        raise ValueError(f"{path}: 'keypoint_prompts' must be {K} non-empty strings, one per keypoint")
    pairs, sigmas = category_field(cats, "flip_pairs", path), category_field(cats, "sigmas", path)
    return dict(
        names=list(names), category_ids={c["id"] for c in cats},
        skeleton=read_skeleton(cats[0].get("skeleton"), K, path),
        prompts=[p.strip() for p in prompts] if prompts is not None else None,
        flip_pairs=None if pairs is None else check_flip_pairs(pairs, names, f"{path}: 'flip_pairs'"),
        sigmas=None if sigmas is None else check_sigmas(
            finite_numbers(sigmas, K, f"{path}: category {cats[0]['id']}", "sigmas"), K, path))


def index_coco(data):
    """A pycocotools COCO over an already-read (and validated) json dict."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


def load_detections(path, coco, score_threshold=0.0):
    """Detected boxes for evaluation: a COCO detection-results json [{"image_id", "category_id",
    "bbox", "score"}, ...] -> the entries with score >= score_threshold. coco: the keypoint ground
    truth (a pycocotools COCO, e.g. KeypointDataset.coco, or the path of its json); a detection for
    an image not in it is an error. With one keypoint category (COCO person) every detection
    becomes that category (filter a multi-class detector's file to its person/animal class first);
    with several (AP-10K species) a detection must name one of them."""
    data = load_coco_json(coco) if isinstance(coco, str) else coco.dataset
    dets = read_json(path, "detections")
    if not isinstance(dets, list):
        raise ValueError(f'{path}: expected a list of detections [{{"image_id", "category_id", '
                         '"bbox", "score"}, ...] (COCO detection results)')
    images = {im.get("id") for im in data["images"] if isinstance(im, dict)}
    keypoint_cats = sorted(c.get("id") for c in data["categories"] if isinstance(c, dict) and c.get("keypoints"))
    out, seen = [], set()
    for n, det in enumerate(dets):
        where = f"{path}: detection #{n}"
        det = check_detection(det, where, images)
        seen.add(det["category_id"])
        if len(keypoint_cats) == 1:
            det["category_id"] = keypoint_cats[0]
        elif det["category_id"] not in keypoint_cats:
            raise ValueError(f"{where}: category_id {det['category_id']} is not a keypoint "
                             f"category of the ground truth ({keypoint_cats})")
        if det["score"] >= score_threshold:
            out.append(det)
    if len(keypoint_cats) == 1 and len(seen) > 1:
        warnings.warn(f"{path}: detections of {len(seen)} categories {sorted(seen)[:10]} are all "
                      f"taken as keypoint category {keypoint_cats[0]}")
    return out


def check_detection(det, where, images):
    """One detection -> a clean dict, or ValueError naming `where` and the field."""
    if not isinstance(det, dict):
        raise ValueError(f"{where} is not an object")
    for key in ("image_id", "category_id"):
        integer_id(det, key, where)
    if det["image_id"] not in images:
        raise ValueError(f"{where}: image id {det['image_id']} is not in the ground-truth json")
    return {"image_id": det["image_id"], "category_id": det["category_id"],
            "bbox": finite_numbers(det.get("bbox"), 4, where, "bbox").tolist(),
            "score": finite_number(det.get("score"), where, "score")}


def clip_box(bbox, width, height):
    """COCO box [x, y, w, h] clipped to a width x height image (w or h <= 0: nothing left)."""
    x, y, w, h = [float(v) for v in bbox]
    x1, y1 = max(x, 0.0), max(y, 0.0)
    return [x1, y1, min(x + w, float(width)) - x1, min(y + h, float(height)) - y1]


def crosses_border(bbox, image):
    """Whether a box [x, y, w, h] reaches outside its image (and gets clipped)."""
    x, y, w, h = bbox
    return x < 0 or y < 0 or x + w > image["width"] or y + h > image["height"]


def instance_box(bbox, width, height):
    """The box a ground-truth instance is cropped from, as the authors' loaders make it
    (mmpose's COCO-style datasets, AP-10K's included): the far corner one pixel in, x2 = x + w - 1,
    clipped to the pixels [0, width - 1] (mmpose adds w - 1 to the clipped x1 instead, which
    shifts a box that starts left of the image; the two agree for every box inside it)."""
    x, y, w, h = [float(v) for v in bbox]
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w - 1, width - 1.0), min(y + h - 1, height - 1.0)
    return [x1, y1, x2 - x1, y2 - y1]
