"""files.py: writes are whole or absent and never go through a link; logs read back tolerantly;
two evaluations started together never share an output directory."""
import json
import multiprocessing
import os

import pytest

import files


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "metrics.json"
    files.write_json(str(path), {"AP": 0.5})
    with pytest.raises(RuntimeError):
        with files.atomic_file(str(path), "w") as f:
            f.write('{"AP": 0.')
            raise RuntimeError("killed half way")
    assert json.load(open(path)) == {"AP": 0.5} and os.listdir(tmp_path) == ["metrics.json"]
    files.write_json(str(path), {"AP": float("nan"), "list": [float("inf"), 1.0]})
    assert json.load(open(path)) == {"AP": None, "list": [None, 1.0]}   # valid JSON, no NaN token


def test_writes_replace_a_planted_link_instead_of_writing_through_it(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    for name in ("few_shot_image_ids.json", "args.json"):
        os.symlink(target, tmp_path / name)
        files.write_json(str(tmp_path / name), [1, 2, 3])
        assert not os.path.islink(tmp_path / name) and json.load(open(tmp_path / name)) == [1, 2, 3]
    os.symlink(target, tmp_path / "log.jsonl")
    with pytest.raises(OSError):
        files.append_line(str(tmp_path / "log.jsonl"), {"epoch": 0})
    assert target.read_text() == "keep me"


def test_log_lines_are_whole_and_a_torn_tail_is_dropped(tmp_path):
    path = str(tmp_path / "log.jsonl")
    assert files.read_lines(path) == []
    files.append_line(path, {"epoch": 0, "loss": 1.5})
    files.append_line(path, {"epoch": 1, "loss": float("nan")})
    with open(path, "a") as f:
        f.write('{"epoch": 2, "lo')                       # a write cut short by a kill
    with pytest.warns(UserWarning, match="log.jsonl: dropped its torn last line"):
        assert files.read_lines(path) == [{"epoch": 0, "loss": 1.5}, {"epoch": 1, "loss": None}]
    with pytest.warns(UserWarning, match="log.jsonl: dropped its torn last line"):
        files.append_line(path, {"epoch": 2})              # the run goes on: the torn tail is cut
    files.append_line(path, {"epoch": 3})
    assert files.read_lines(path) == [{"epoch": 0, "loss": 1.5}, {"epoch": 1, "loss": None},
                                      {"epoch": 2}, {"epoch": 3}]
    files.write_lines(path, [{"epoch": 0}])
    assert files.read_lines(path) == [{"epoch": 0}]
    with open(path, "a") as f:
        f.write('{"epo\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match=r"log\.jsonl: line 2 is not a json record"):
        files.read_lines(path)


def claim(base, barrier, out):
    barrier.wait()
    out.put(files.claim_output_dir(base))


@pytest.mark.parametrize("existing", [False, True])
def test_evaluations_started_together_claim_different_directories(tmp_path, existing):
    base = tmp_path / "eval"
    if existing:
        base.mkdir()   # an empty directory made by the user: one evaluation may take it
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=claim, args=(str(base), barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    claimed = sorted(out.get(timeout=5) for _ in procs)
    assert claimed == sorted({str(base)} | {f"{base}-{n}" for n in (2, 3, 4)})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metrics.json").write_text("{}")      # an earlier evaluation's outputs
    assert files.claim_output_dir(str(tmp_path / "other")) == f"{tmp_path / 'other'}-2"


def test_json_reads_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,\n "b": }')
    with pytest.raises(ValueError, match=r"bad\.json: malformed json at line 2"):
        files.read_json(str(bad))
    bad.write_bytes(b'{"name": "\xff\xfe"}')
    with pytest.raises(ValueError, match=r"bad\.json line 1: not UTF-8"):
        files.read_json(str(bad))
    bad.write_bytes(b'\xef\xbb\xbf{"a": 1}')                       # a byte-order mark (Windows)
    assert files.read_json(str(bad)) == {"a": 1}
    with pytest.raises(FileNotFoundError, match="nope.json"):
        files.read_json(str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match=r"'bbox'\[1\] is nan, not a finite number"):
        files.finite_numbers([1, float("nan"), 2, 3], 4, "x", "bbox")
