"""keypoints.py: left/right pairs read from the names of real data sets in every naming
convention, and the negatives that must not pair."""
import pytest

import keypoints as KP

ANIMAL_POSE = ["L_Eye", "R_Eye", "L_EarBase", "R_EarBase", "Nose", "Throat", "TailBase", "Withers",
               "L_F_Elbow", "R_F_Elbow", "L_B_Elbow", "R_B_Elbow", "L_F_Knee", "R_F_Knee", "L_B_Knee",
               "R_B_Knee", "L_F_Paw", "R_F_Paw", "L_B_Paw", "R_B_Paw"]

HORSE10 = ["Nose", "Eye", "Nearknee", "Nearfrontfetlock", "Nearfrontfoot", "Offknee", "Offfrontfetlock",
           "Offfrontfoot", "Shoulder", "Midshoulder", "Elbow", "Girth", "Wither", "Nearhindhock",
           "Nearhindfetlock", "Nearhindfoot", "Hip", "Stifle", "Offhindhock", "Offhindfetlock",
           "Offhindfoot", "Ischium"]

LEGS = [f"{leg}{i}" for leg in ("foreleg", "midleg", "hindleg") for i in (1, 2, 3, 4)]

FLY = (["head", "eyeL", "eyeR", "neck", "thorax", "abdomen"] + [l[:-1] + "R" + l[-1] for l in LEGS]
       + [l[:-1] + "L" + l[-1] for l in LEGS] + ["wingL", "wingR"])

LOCUST = (["head", "neck", "thorax", "abdomen1", "abdomen2", "anttipL", "antbaseL", "eyeL"]
          + [l[:-1] + "L" + l[-1] for l in LEGS] + ["anttipR", "antbaseR", "eyeR"]
          + [l[:-1] + "R" + l[-1] for l in LEGS])

ZEBRA = ["snout", "head", "neck", "forelegL1", "forelegR1", "hindlegL1", "hindlegR1", "tailbase", "tailtip"]

MOUSE = ["snout", "leftear", "rightear", "shoulder", "spine1", "tailbase", "tailend"]


def test_flip_pairs_from_real_name_sets():
    assert KP.derive_flip_pairs(KP.AP10K_KEYPOINTS) == KP.AP10K_FLIP_PAIRS
    assert KP.derive_flip_pairs(KP.COCO_KEYPOINTS) == KP.COCO_FLIP_PAIRS
    # Animal-Pose (mmpose's meta-information pairs)
    assert KP.derive_flip_pairs(ANIMAL_POSE) == [(0, 1), (2, 3), (8, 9), (10, 11), (12, 13), (14, 15),
                                                (16, 17), (18, 19)]
    assert KP.derive_flip_pairs(HORSE10) == []  # Near/Off: nearer/farther side, a flip keeps them
    assert FLY[6] == "forelegR1" and FLY[18] == "forelegL1" and len(FLY) == 32
    assert KP.derive_flip_pairs(FLY) == [(1, 2)] + [(6 + i, 18 + i) for i in range(12)] + [(30, 31)]
    assert LOCUST[8] == "forelegL1" and LOCUST[23] == "forelegR1" and len(LOCUST) == 35
    assert KP.derive_flip_pairs(LOCUST) == [(5 + i, 20 + i) for i in range(15)]
    assert KP.derive_flip_pairs(ZEBRA) == [(3, 4), (5, 6)]
    assert KP.derive_flip_pairs(MOUSE) == [(1, 2)]


@pytest.mark.parametrize("names", [
    ["nose", "L_Eye", "R_Eye"], ["nose", "leftear", "rightear"], ["nose", "eyeL", "eyeR"],
    ["nose", "forelegL1", "forelegR1"], ["nose", "Eye_Left", "Eye_Right"], ["nose", "left_eye", "right_eye"],
    ["nose", "LEFT_EYE", "RIGHT_EYE"], ["nose", "LeftEye", "RightEye"], ["nose", "l_eye", "r_eye"],
    ["nose", "eye-l", "eye-r"], ["nose", "Left Eye", "right eye"], ["nose", " left_eye", "right_eye  "],
    ["nose", "frontleftpaw", "frontrightpaw"], ["nose", "pawleft", "pawright"], ["nose", "LEar", "REar"],
    ["nose", "lft_ear", "rgt_ear"], ["nose", "Ohr_links", "Ohr_rechts"], ["nose", "oreille_gauche", "oreille_droite"],
])
def test_flip_pairs_every_convention(names):
    assert KP.derive_flip_pairs(names) == [(1, 2)]
    assert KP.derive_flip_pairs(names[::-1]) == [(0, 1)]  # order does not matter


def test_flip_pairs_of_quadruped_limb_abbreviations():
    """Front / hind x left / right abbreviations pair in any order and case; an ambiguous one
    (RR: rear or right?) is refused with the way to give pairs, never left to mirror unswapped."""
    names = ["nose", "shoulder_FL", "shoulder_FR", "paw_HL", "paw_HR", "LF_paw", "RF_paw", "elbowBL",
             "elbowBR", "lh_knee", "rh_knee"]
    assert KP.derive_flip_pairs(names) == [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10)]
    for bad in (["nose", "paw_RR", "paw_RL"], ["nose", "shoulder_FL"]):
        with pytest.raises(ValueError, match=r"look left/right-sided but have no partner.*--flip-pairs"):
            KP.derive_flip_pairs(bad)
    with pytest.raises(ValueError, match="read as the same name"):
        KP.derive_flip_pairs(["FL_paw", "LF_paw", "FR_paw"])


def test_flip_pairs_of_names_differing_in_one_side_letter():
    """Names side_key cannot read alone pair when they differ only in one l <-> r letter of the
    same case at the edge of a word: mmpose's zebra names lower- or upper-cased, leye / reye."""
    for names in ([n.lower() for n in ZEBRA], [n.upper() for n in ZEBRA]):
        assert KP.derive_flip_pairs(names) == [(3, 4), (5, 6)]
        assert KP.keypoint_sides(names, [(3, 4), (5, 6)])[3:7] == ["left", "right", "left", "right"]
    names = ["nose", "reye", "leye", "Rforepaw", "Lforepaw", "FRpaw", "FLpaw", "EYER", "EYEL"]
    assert KP.derive_flip_pairs(names) == [(1, 2), (3, 4), (5, 6), (7, 8)]
    assert KP.keypoint_sides(names, KP.derive_flip_pairs(names)) == ["centre"] + ["right", "left"] * 4
    for other in (["bill", "birl"], ["tail1", "tail2"], ["lip", "rib"]):  # no pair
        assert KP.derive_flip_pairs(other) == []


@pytest.mark.parametrize("names", [
    ["Lip", "Rib", "nose"], ["LIP"],                         # L/R starting a word is no side
    ["tail", "tailbase", "tail_end", "Tail1", "Tail2", "TailBase", "tailtip"],
    ["bright_spot", "upright", "cleft", "nose"],             # left/right inside a word, no partner
    HORSE10,
])
def test_flip_pairs_no_false_pairs_and_no_false_errors(names):
    assert KP.derive_flip_pairs(names) == []


def test_flip_pairs_sided_name_without_partner_explains_what_to_do():
    with pytest.raises(ValueError, match=r"\['earL'\] look left/right-sided.*flip_pairs.*--flip-pairs.*--no-flip"):
        KP.derive_flip_pairs(["eyeL", "eyeR", "earL", "nose"])
    assert KP.derive_flip_pairs(["eyeL", "eyeR", "earL", "nose"], require_partners=False) == [(0, 1)]
    for names in (["tail", "TailL"], ["L1x", "nose"], ["nose", "left_eye"]):  # a lone side word
        with pytest.raises(ValueError, match="look left/right-sided"):
            KP.derive_flip_pairs(names)
    with pytest.raises(ValueError, match="read as the same name"):
        KP.derive_flip_pairs(["left_eye", "Left Eye", "right_eye"])


def test_parse_flip_pairs():
    names = ["nose", "L_Eye", "R_Eye", "L_Ear", "R_Ear"]
    assert KP.parse_flip_pairs("1,2;3,4", names) == [(1, 2), (3, 4)]
    assert KP.parse_flip_pairs(" R_Ear , L_Ear ; 1,R_Eye ", names) == [(1, 2), (3, 4)]
    assert KP.parse_flip_pairs("", names) == []
    for spec, msg in [("1,2,3", "exactly two"), ("1,1", "repeats a keypoint"), ("1,2;2,3", "repeats a keypoint"),
                      ("1,9", r"'?9'? is neither .* 0\.\.4"), ("L_Eye,eye_r", "'eye_r' is neither"),
                      ("-1,2", "neither")]:
        with pytest.raises(ValueError, match=f"--flip-pairs: .*{msg}"):
            KP.parse_flip_pairs(spec, names)
