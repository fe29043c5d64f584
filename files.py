"""Every file a run or an evaluation reads or writes goes through here.

Writes are atomic: a temporary file beside the target (created new, never through a link),
fsynced and renamed over it, so a crash or a kill at any moment leaves the old file or the new
one, never a torn one; a failed write removes it and names the path. Logs are appended one whole
line per write and read back tolerantly. Failed reads and json checks name the file and field.
"""
import contextlib
import itertools
import json
import math
import os
import warnings

import numpy as np

# What an evaluation writes: a directory holding any of these is never written into again.
EVAL_OUTPUTS = ("metrics.json", "results.json", "photo_results.json", "photo_images.json", "vis")
EVAL_OUTPUT_SUFFIXES = ("_pose.mp4", "_keypoints.json", "_keypoints.csv", "_trajectories.png")


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
    """`with atomic_file(path) as f: ...` writes `path` completely or not at all."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces a link itself, never writes through it
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def json_safe(value):
    """Non-finite floats -> None, recursively, so the file is valid JSON (no NaN tokens)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path, data, indent=None):
    try:
        with atomic_file(path, "w") as f:
            json.dump(json_safe(data), f, indent=indent, allow_nan=False)
    except OSError as e:
        raise OSError(f"cannot write {path} ({e.strerror or e})") from None


def read_text(path, what=None):
    """A UTF-8 text file (a leading byte-order mark dropped), or a one-line error naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FileNotFoundError(f"cannot read {what + ' ' if what else ''}{path}: "
                                f"{e.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{path} line {line}: not UTF-8 text (byte {data[e.start]:#04x}): "
                         f"save the {what or 'file'} as UTF-8") from None


def read_json(path, what="file"):
    """json.loads of read_text, with errors that name the file (and the line, for malformed json)."""
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed json at line {e.lineno} column {e.colno}: {e.msg}") from e


def finite_numbers(values, count, where, field):
    """A list of `count` finite numbers (not strings) -> float64 array, or a ValueError line."""
    if not isinstance(values, list) or len(values) != count:
        got = f"{len(values)} values" if isinstance(values, list) else repr(values)
        raise ValueError(f"{where}: '{field}' must be a list of {count} numbers, got {got}")
    if not set(map(type, values)) <= {int, float}:
        i = next(i for i, v in enumerate(values) if type(v) not in (int, float))
        raise ValueError(f"{where}: '{field}'[{i}] is {values[i]!r}, not a number")
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        i = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ValueError(f"{where}: '{field}'[{i}] is {values[i]}, not a finite number")
    return array


def finite_number(value, where, field, minimum=None):
    """One finite number (>= minimum if given) or a ValueError naming `where` and the field."""
    if type(value) not in (int, float) or not np.isfinite(value):
        raise ValueError(f"{where}: '{field}' is {value!r}, not a finite number")
    if minimum is not None and value < minimum:
        raise ValueError(f"{where}: '{field}' is {value}, must be >= {minimum}")
    return float(value)


def integer_id(item, key, where):
    """item[key] as an integer id, or a ValueError naming `where` (missing, or not an integer)."""
    if key not in item:
        raise ValueError(f"{where} has no '{key}'")
    if type(item[key]) is not int:
        raise ValueError(f"{where}: '{key}' is {item[key]!r}, not an integer")
    return item[key]


def append_line(path, record):
    """Append one json record as one line with a single write (never through a link); a torn
    last line (a write cut by a kill or a full disk) is cut off first, with a warning."""
    data = (json.dumps(json_safe(record), allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        end = os.fstat(fd).st_size
        if end and os.pread(fd, 1, end - 1) != b"\n":
            end = os.pread(fd, end, 0).rfind(b"\n") + 1
            os.ftruncate(fd, end)
            warnings.warn(f"{path}: dropped its torn last line (a write cut short)")
        if os.pwrite(fd, data, end) != len(data):
            os.ftruncate(fd, end)
            raise OSError(f"cannot append to {path} (disk full?)")
    finally:
        os.close(fd)


def write_lines(path, records):
    """Replace a log with these json records, one a line, atomically."""
    with atomic_file(path, "w") as f:
        f.writelines(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in records)


def read_lines(path):
    """The json records of a log written by append_line. A torn last line (a write cut by a
    kill) is dropped with a warning; a bad line elsewhere is an error naming the line."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    records = []
    for n, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n < len(lines) - 1:
                raise ValueError(f"{path}: line {n + 1} is not a json record; remove it") from None
            warnings.warn(f"{path}: dropped its torn last line (a write cut short)")
    return records


def torch_load(path, expected):
    """torch.load(weights_only=True) of a file, or an error naming it and what was `expected`."""
    import torch  # here, so that convert.py reads and writes files without torch
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{os.fspath(path)} not found (expected {expected})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # garbage makes the unpicklers raise almost anything
        raise ValueError(f"cannot read {os.fspath(path)} (truncated or not a torch file?); "
                         f"expected {expected}: {type(e).__name__}: {str(e)[:300]}") from e


def claim_output_dir(base):
    """The absolute `base`, or base-2, base-3, ...: the first that holds no evaluation outputs and
    is claimed by creating its .evaluation exclusively (two evaluations never share one)."""
    base = os.path.abspath(base)
    for n in itertools.count(1):
        path = base if n == 1 else f"{base}-{n}"
        try:
            os.makedirs(path, exist_ok=True)
            if not os.path.isdir(path) or any(f in EVAL_OUTPUTS or f.endswith(EVAL_OUTPUT_SUFFIXES)
                                               for f in os.listdir(path)):
                continue
            os.close(os.open(os.path.join(path, ".evaluation"), os.O_CREAT | os.O_EXCL, 0o644))
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise OSError(f"cannot create the output directory {path} ({e.strerror}); "
                          f"choose another --output-dir") from None


def release_output_dir(out_dir):
    """A run that failed before writing any output (an empty vis/ at most) gives its output
    directory back: the .evaluation marker and the directory removed, so the next run writes
    there (claim_output_dir skips only a directory holding outputs)."""
    with contextlib.suppress(OSError):
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(out_dir, "vis"))  # made by run_photos; removed only if empty
        if os.listdir(out_dir) == [".evaluation"]:
            os.remove(os.path.join(out_dir, ".evaluation"))
            os.rmdir(out_dir)
