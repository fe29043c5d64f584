"""Keypoint sets and what they carry: names, prompt texts (Eq. 2), left/right pairs, OKS sigmas.

The known sets (AP-10K, COCO) carry all of it. For other data each item comes from, first that
applies: the caller (a flag), the json category (`keypoint_prompts`, `flip_pairs`, `sigmas`),
the known set with exactly these names, else a default: the names with '_' -> ' ' as prompt
texts, pairs read from the names (`side_key`, the one reading of left/right, used by the flip
augmentation and by the figures' colours; an error when a side has no partner, unless flip is
off), sigma 0.05 with a warning. Only the known sets have half-body groups.
"""
import argparse
import re
import warnings

import numpy as np

AP10K_KEYPOINTS = [
    "left_eye", "right_eye", "nose", "neck", "root_of_tail", "left_shoulder", "left_elbow",
    "left_front_paw", "right_shoulder", "right_elbow", "right_front_paw", "left_hip", "left_knee",
    "left_back_paw", "right_hip", "right_knee", "right_back_paw"]

# The authors' prompt words (their `class_names`): the names with '_' -> ' ', but 'tail root'.
AP10K_PROMPTS = ["tail root" if n == "root_of_tail" else n.replace("_", " ")
                 for n in AP10K_KEYPOINTS]

AP10K_FLIP_PAIRS = [(0, 1), (5, 8), (6, 9), (7, 10), (11, 14), (12, 15), (13, 16)]
AP10K_SIGMAS = np.array([.025, .025, .026, .035, .035, .079, .072, .062, .079, .072, .062,
                         .107, .087, .089, .107, .087, .089])

# Half-body groups of AP-10K's published meta-information, as the authors ran them. R_F_Paw
# (right_front_paw, index 10) is in the LOWER body there although L_F_Paw (7) is upper --
# probably a typo upstream, kept so that training matches the published numbers.
AP10K_UPPER_BODY = [0, 1, 2, 3, 5, 6, 7, 8, 9]

# AP-10K skeleton as written in its json (1-based keypoint indices).
AP10K_SKELETON = [[1, 2], [1, 3], [2, 3], [3, 4], [4, 5], [4, 6], [6, 7], [7, 8], [4, 9],
                  [9, 10], [10, 11], [5, 12], [12, 13], [13, 14], [5, 15], [15, 16], [16, 17]]

COCO_KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]
COCO_FLIP_PAIRS = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07,
                        .87, .87, .89, .89]) / 10.0
COCO_UPPER_BODY = list(range(11))

# What a dataset with exactly these keypoint names gets unless the json or the caller says
# otherwise (prompts None: the names with '_' -> ' ').
KNOWN_KEYPOINT_SETS = [
    dict(names=AP10K_KEYPOINTS, prompts=AP10K_PROMPTS, flip_pairs=AP10K_FLIP_PAIRS,
         sigmas=AP10K_SIGMAS, upper_body=AP10K_UPPER_BODY),
    dict(names=COCO_KEYPOINTS, prompts=None, flip_pairs=COCO_FLIP_PAIRS, sigmas=COCO_SIGMAS,
         upper_body=COCO_UPPER_BODY)]

DEFAULT_SIGMA = 0.05  # OKS sigma for keypoints of an unknown dataset when none are given


def default_prompt_texts(keypoint_names):
    """The text of each keypoint's prompt when the data gives none: 'left_eye' -> 'left eye'."""
    return [name.replace("_", " ").strip() for name in keypoint_names]


def prompt_texts_for(keypoint_names, keypoint_prompts=None):
    """The text of each keypoint for its prompt (Eq. 2): the json's `keypoint_prompts` if given,
    the authors' words for AP-10K ('tail root' for root_of_tail), else the names with '_' -> ' '."""
    if keypoint_prompts is not None:
        return list(keypoint_prompts)
    known = next((s for s in KNOWN_KEYPOINT_SETS if s["names"] == list(keypoint_names)), {})
    return list(known.get("prompts") or default_prompt_texts(keypoint_names))


# A name is cut into words at separators, lower->upper case changes and letter<->digit
# changes: "forelegL1" -> foreleg L 1, "L_EarBase" -> L Ear Base, "Lip" -> Lip.
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+|[^\W\d_]+")

_SIDE = {"left": "<L>", "right": "<R>", "l": "<L>", "r": "<R>", "lt": "<L>", "rt": "<R>",
         "lft": "<L>", "rgt": "<R>", "links": "<L>", "rechts": "<R>", "gauche": "<L>",
         "droite": "<R>", "izquierda": "<L>", "derecha": "<R>", "sinistra": "<L>", "destra": "<R>"}
# Quadruped limb abbreviations: front / hind (back) x left / right, either order (FL, LF, HR, ...)
_LIMB = re.compile(r"([fhb])([lr])|([lr])([fhb])")

_MIRROR = {"<L>": "<R>", "<R>": "<L>"}

PAIRS_HELP = ('give the pairs in the json category ("flip_pairs": [[i, j], ...], 0-based '
              'indices or names; [] if no name is sided), or with --flip-pairs "i,j;k,l", or '
              'turn flipping off with --no-flip')


def side_key(name):
    """A keypoint name -> (words with side markers '<L>'/'<R>', how sure: 'word', 'inside' or None).
    'word': a whole word left/right/L/R in any case or language ("L_Eye", "eyeR",
    "forelegL1", "Eye_Left", "lft_ear", "Ohr_links"), a word starting with left/right
    ("leftear"), or a limb abbreviation (shoulder_FL / shoulder_FR, paw_HL, LF_paw). 'inside':
    left/right inside a word ("frontleftpaw", "earright"; also "bright", hence only paired,
    never an error). 'ambiguous': LL, LR, RL, RR (rear or right?). Near/Off (Horse-10: nearer /
    farther from the camera) are not sides: a flip keeps them."""
    words, sure = [], None
    for word in _WORD.findall(name):
        low = word.lower()
        start = re.fullmatch(r"(left|right)([a-z]+)", low)
        limb = _LIMB.fullmatch(low)
        if low in _SIDE:
            words, sure = words + [_SIDE[low]], "word"
        elif limb:
            front = (limb[1] or limb[4]) == "f"
            words, sure = words + ["front" if front else "hind", _SIDE[limb[2] or limb[3]]], "word"
        elif re.fullmatch(r"[lr][lr]", low):
            return tuple(words + [low]), "ambiguous"
        elif start:
            words, sure = words + [_SIDE[start[1]], start[2]], "word"
        else:
            words.append(low)
    if sure:
        return tuple(words), sure
    inside = [_SIDE.get(p, p) for w in words for p in re.split(r"(left|right)", w) if p]
    if any(p in _MIRROR for p in inside):
        return tuple(inside), "inside"
    return tuple(words), None


def derive_flip_pairs(keypoint_names, require_partners=True):
    """Left/right pairs (i, j), i < j, sorted: names that are each other's mirror by side_key. A
    name with a whole-word or ambiguous side and no partner raises ValueError if require_partners
    (its flip would teach the wrong side); otherwise such names stay unpaired."""
    keys, index = [side_key(n) for n in keypoint_names], {}
    for i, (key, sure) in enumerate(keys):
        if sure in ("word", "inside"):
            if key in index:
                raise ValueError(f"keypoint names {keypoint_names[index[key]]!r} and "
                                 f"{keypoint_names[i]!r} read as the same name; rename one")
            index[key] = i
    pairs, unpaired = [], []
    for i, (key, sure) in enumerate(keys):
        j = index.get(tuple(_MIRROR.get(t, t) for t in key)) if sure else None
        if j is not None and i < j:
            pairs.append((i, j))
        elif j is None and sure in ("word", "ambiguous"):
            unpaired.append(keypoint_names[i])
    plain = [i for i, (_, sure) in enumerate(keys) if sure is None]  # no side read from the words
    pairs += [(i, j) for n, i in enumerate(plain) for j in plain[n + 1:]
              if letter_side(keypoint_names[i], keypoint_names[j])]
    if unpaired and require_partners:
        raise ValueError(f"keypoint name(s) {unpaired} look left/right-sided but have no "
                         f"partner on the other side; {PAIRS_HELP}")
    return sorted(pairs)


def letter_side(a, b):
    """'l' or 'r': the side of name `a` where names a and b differ only in one l <-> r letter of
    the same case at the edge of a word ("forelegl1" / "forelegr1", "leye" / "reye", "EYEL" /
    "EYER", "FLpaw" / "FRpaw": sides side_key cannot read from one name alone); else None."""
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(a) != len(b) or len(diff) != 1 or {a[diff[0]], b[diff[0]]} not in ({"l", "r"},
                                                                             {"L", "R"}):
        return None
    i = diff[0]
    around = a[i - 1:i] + a[i + 1:i + 2]  # its neighbours (one at an end of the name)
    edge = len(around) < 2 or any(not c.isalpha() or c.isupper() != a[i].isupper() for c in around)
    return a[i].lower() if edge else None


def check_flip_pairs(pairs, keypoint_names, where):
    """Validate pairs of 0-based indices or names (compared after trimming whitespace) ->
    sorted [(i, j)] with i < j; ValueError naming `where` (a file and field, or a flag)."""
    names = [n.strip() for n in keypoint_names]
    out, used = [], set()
    if not isinstance(pairs, (list, tuple)):
        raise ValueError(f"{where}: flip pairs must be a list of [i, j] pairs, got {pairs!r}")
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"{where}: each flip pair needs exactly two keypoints, got {pair!r}")
        ids = []
        for v in pair:
            if isinstance(v, str) and v.strip() in names:
                ids.append(names.index(v.strip()))
            elif isinstance(v, (int, np.integer)) and not isinstance(v, bool) \
                    and 0 <= v < len(names):
                ids.append(int(v))
            else:
                raise ValueError(f"{where}: {v!r} is neither a keypoint name nor a 0-based index "
                                 f"0..{len(names) - 1}; the keypoints are {list(keypoint_names)}")
        if ids[0] == ids[1] or used & set(ids):
            raise ValueError(f"{where}: pair {pair!r} repeats a keypoint (each keypoint may be in "
                             "one pair, with another keypoint)")
        used |= set(ids)
        out.append(tuple(sorted(ids)))
    return sorted(out)


def parse_flip_pairs(spec, keypoint_names):
    """The value of `--flip-pairs`, "a,b;c,d", each a keypoint name or a 0-based index
    (an all-digit item is an index), -> sorted [(i, j)]. "" gives no pairs."""
    items = [[p.strip() for p in item.split(",")] for item in spec.split(";") if item.strip()]
    pairs = [[int(p) if p.isdigit() else p for p in parts] for parts in items]
    return check_flip_pairs(pairs, keypoint_names, "--flip-pairs")


def keypoint_sides(keypoint_names, flip_pairs):
    """'left' / 'right' / 'centre' per keypoint (the figures' colours): keypoints in no flip
    pair are centre; in a pair (a, b) side_key says which is left; when it cannot, a is."""
    sides = ["centre"] * len(keypoint_names)
    for a, b in flip_pairs:
        name_a, name_b = keypoint_names[a], keypoint_names[b]
        a_right = ("<R>" in side_key(name_a)[0] or "<L>" in side_key(name_b)[0]
                   or letter_side(name_a, name_b) == "r")
        sides[a], sides[b] = ("right", "left") if a_right else ("left", "right")
    return sides


def check_sigmas(sigmas, num_keypoints, where):
    """OKS sigmas, a list of numbers (json) or "0.1,0.2,..." (a flag) -> float64 (K,) of finite
    positive numbers, K = num_keypoints (None: any); else a ValueError naming `where`."""
    if isinstance(sigmas, str):
        sigmas = [s for s in sigmas.split(",") if s.strip()]
        try:
            sigmas = [float(s) for s in sigmas]
        except ValueError:
            raise ValueError(f"{where}: sigmas must be comma-separated numbers, got {sigmas}") from None
    if not isinstance(sigmas, (list, tuple, np.ndarray)) or not all(
            isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) for v in sigmas):
        raise ValueError(f"{where}: sigmas must be a list of numbers, one per keypoint, got {sigmas!r}")
    array = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if num_keypoints is not None and array.shape != (num_keypoints,):
        raise ValueError(f"{where}: {array.size} sigmas given, the data has {num_keypoints} "
                         "keypoints (one sigma per keypoint)")
    if not (array.size and np.isfinite(array).all() and (array > 0).all()):
        raise ValueError(f"{where}: sigmas must be finite and > 0, got {array.tolist()}")
    return array


def sigma_list(text):
    """argparse type of --sigmas: comma-separated positive numbers (counted against the data later)."""
    try:
        return check_sigmas(text, None, "--sigmas").tolist()
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None


def check_distinct_prompts(names, prompts, where):
    """Two keypoints whose prompt texts read the same to CLIP's tokenizer (it lowercases and
    folds spaces) could not be told apart by L_semantic or the score maps: refuse them."""
    seen = {}
    for name, text in zip(names, prompts):
        key = " ".join(text.lower().split())
        if key in seen:
            raise ValueError(f"{where}: keypoints {seen[key]!r} and {name!r} have the same prompt "
                             f"text {key!r} to the text encoder: rename one, or give distinct "
                             f"'keypoint_prompts' in the json category")
        seen[key] = name


def keypoint_metadata(keypoint_set, path, sigmas=None, flip_pairs=None, flip=True):
    """Prompt texts, flip pairs, OKS sigmas (sigmas_given False: the default) and the upper body
    of a keypoint set, each from the first source that applies (the module's docstring)."""
    names = keypoint_set["names"]
    known = next((s for s in KNOWN_KEYPOINT_SETS if s["names"] == names), {})
    prompts = prompt_texts_for(names, keypoint_set["prompts"])
    check_distinct_prompts(names, prompts, path)
    if isinstance(flip_pairs, str):
        pairs = parse_flip_pairs(flip_pairs, names)
    elif flip_pairs is not None:
        pairs = check_flip_pairs(flip_pairs, names, "flip_pairs")
    elif keypoint_set["flip_pairs"] is not None:
        pairs = keypoint_set["flip_pairs"]
    elif known:
        pairs = list(known["flip_pairs"])
    else:
        try:
            pairs = derive_flip_pairs(names, require_partners=flip)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    sigmas_given = True
    if sigmas is not None:
        sigmas = check_sigmas(sigmas, len(names), path)
    elif keypoint_set["sigmas"] is not None:
        sigmas = keypoint_set["sigmas"]
    elif known:
        sigmas = known["sigmas"].copy()
    else:
        sigmas, sigmas_given = np.full(len(names), DEFAULT_SIGMA), False
        warnings.warn(f"{path}: unknown keypoint set, using OKS sigma {DEFAULT_SIGMA} for every "
                      "keypoint (pixel errors lead the report and pick best.pt); give 'sigmas' in "
                      "the json category or --sigmas for meaningful AP")
    return dict(prompt_texts=prompts, flip_pairs=pairs, sigmas=sigmas, sigmas_given=sigmas_given,
                upper_body=known.get("upper_body"))
