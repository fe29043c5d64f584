"""The process group and the entry points' error handling, shared by train.py and evaluate.py.

`torchrun` sets RANK / LOCAL_RANK / WORLD_SIZE; a plain `python` run is one process with no
process group and goes through exactly the same code. Only rank 0 prints and writes files.
Bad input ends in one line `error: ...` (exit 1), never a traceback (`run_cli`).
"""
import argparse
import contextlib
import datetime
import json
import math
import os
import signal
import sys
import time
import uuid

import torch
import torch.distributed as dist

STORE_TIMEOUT = datetime.timedelta(minutes=30)  # torch's default for the process group


def init_distributed(device=None):
    """Join torchrun's process group, if any -> (rank, local_rank, world, device). device None:
    cuda:LOCAL_RANK when a GPU is visible, else the CPU ('cuda' without a GPU: a clear error)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA GPU is visible to this process; "
                             f"use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                  world, is_master=False, timeout=STORE_TIMEOUT)
            store = dist.PrefixStore(launch_namespace(store, rank, world), store)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world)
        else:
            dist.init_process_group(backend)
    return rank, local_rank, world, device


def launch_namespace(store, rank, world):
    """A store prefix that this launch of the workers alone uses, agreed by all ranks:
    torchrun's agent keeps one key-value store for all its restarts (`--max-restarts`), and
    the process group finds its peers' addresses under fixed keys in it: a restarted worker
    could read the address of a peer that died (gloo: "Connection refused"; NCCL: a stale
    unique id). Here rank 0 draws a fresh name and hands it to each rank in answer to that
    rank's own fresh token, so that a key left over from an earlier launch is never read."""
    if rank != 0:
        token = uuid.uuid4().hex
        store.set(f"launch/token/{rank}", token)
        store.wait([f"launch/answer/{token}"])
        name = store.get(f"launch/answer/{token}").decode()
        store.set(f"launch/{name}/joined/{rank}", "1")
        return f"launch/{name}/"
    name, waiting = uuid.uuid4().hex, set(range(1, world))
    deadline = time.time() + STORE_TIMEOUT.total_seconds()
    while waiting:
        for r in sorted(waiting):
            if store.check([f"launch/{name}/joined/{r}"]):
                waiting.discard(r)
            elif store.check([f"launch/token/{r}"]):  # possibly an earlier launch's: answered too
                store.set(f"launch/answer/{store.get(f'launch/token/{r}').decode()}", name)
        if time.time() > deadline:
            raise RuntimeError(f"rank(s) {sorted(waiting)} never joined this run's process group "
                               f"within {STORE_TIMEOUT}")
        time.sleep(0.02)
    return f"launch/{name}/"


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def is_main():
    return int(os.environ.get("RANK", "0")) == 0


def print0(*args, **kwargs):
    if is_main():
        print(*args, **kwargs, flush=True)


def all_gather_list(items):
    """Concatenate a python list over all ranks (rank order); one process: the list itself."""
    if not is_distributed():
        return list(items)
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def all_reduce_sum(tensor):
    """Sum a tensor over ranks in place (no-op for one process)."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def on_rank0(fn, *args):
    """fn(*args) on rank 0 only; every rank gets its result or raises its error (none waits)."""
    box = [None]  # rank 0's (value, error class name, message), broadcast to every rank
    if is_main():
        try:
            box = [(fn(*args), None, None)]
        except (OSError, ValueError) as e:
            box = [(None, type(e).__name__, str(e))]
    if is_distributed():
        dist.broadcast_object_list(box, src=0)
    value, kind, message = box[0]
    if kind:
        is_os = kind in ("OSError", "FileNotFoundError", "PermissionError")
        raise (OSError if is_os else ValueError)(message)
    return value


def barrier():
    if is_distributed():
        dist.barrier()


def cleanup():
    if is_distributed():
        dist.destroy_process_group()


def one_line(error):
    """The message of an error, without the traceback a DataLoader worker wraps around it."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1 and "DataLoader worker" in lines[0]:
        return lines[-1].split(": ", 1)[-1]
    return " ".join(lines)


@contextlib.contextmanager
def own_shard():
    """Errors raised inside come from this rank's own share of the data (an image only it
    reads): run_cli reports them from whichever rank raised them."""
    try:
        yield
    except Exception as e:
        e.own_shard = True
        raise


# A collective whose peer process stopped: the peer's own error is the cause, said by the peer.
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL error")


def run_cli(main_fn, parse, on_interrupt="interrupted"):
    """Run an entry point: `main_fn(parse())`. Bad input, a failed write or Ctrl-C end in one
    line, no traceback: said once, by rank 0, or by the rank whose own data failed (`own_shard`).
    Where a peer process stopped, the first process of each node says so in one line (not an
    `error:` line: the peer's own says why). Ctrl-C prints `on_interrupt`."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large file is an OSError, not a kill
    try:
        main_fn(parse())
    except KeyboardInterrupt:
        print0(on_interrupt)
        sys.exit(130)
    except (FileNotFoundError, ValueError, OSError, FloatingPointError, RuntimeError) as e:
        message = one_line(e)
        peer_gone = int(os.environ.get("WORLD_SIZE", "1")) > 1 and any(s in message for s in PEER_GONE)
        if isinstance(e, RuntimeError) and "DataLoader worker" not in str(e) and not peer_gone:
            raise
        if not peer_gone:
            if is_main() or getattr(e, "own_shard", False):
                print(f"error: {message}", file=sys.stderr, flush=True)
            # every rank's error file (torchrun names whichever ended first), so that the failure
            # summary torchrun prints last ends with this line, not a hint about tracebacks
            path = os.environ.get("TORCHELASTIC_ERROR_FILE")
            if path:
                with contextlib.suppress(OSError), open(path, "w") as f:
                    json.dump({"message": f"error: {message}", "timestamp": int(time.time())}, f)
        elif os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"stopped: another process of this run ended (rank {os.environ.get('RANK')} "
                  f"saw: {message[:120]}); its own line above says why, unless its machine died",
                  file=sys.stderr, flush=True)
        sys.exit(1)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default; a default that is None or a switch is said in words."""
    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


# ----------------------------------------------------------------------------- argument types
def number_in(kind, low=-math.inf, high=math.inf, above=False):
    """argparse type: a finite `kind` (int / float) in [low, high], or (low, high] with above."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = math.nan  # not a number: refused below
        if not (math.isfinite(value) and low <= value <= high) or (above and value == low):
            bounds = (f" {'>' if above else '>='} {low:g}" if low > -math.inf else "") + (
                f" and <= {high:g}" if high < math.inf else "")
            raise argparse.ArgumentTypeError(f"expected a finite {kind.__name__}{bounds}, "
                                             f"got {text!r}")
        return value
    return parse


def positive(kind):
    return number_in(kind, 0, above=True)


non_negative_int = number_in(int, 0)
finite_float = number_in(float)


def number_list(kind):
    def parse(text):
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, "
                                             f"got {text!r}") from None
        if not values or (kind is float and not all(map(math.isfinite, values))):
            raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers, got {text!r}")
        return values
    return parse


def n_ctx(text):
    """Context vectors of Eq. 2: 1 to 64, leaving CLIP's 77 text positions room for the names."""
    value = positive(int)(text)
    if value > 64:
        raise argparse.ArgumentTypeError(f"{value} context vectors leave too few of CLIP's 77 "
                                         f"text positions for the keypoint names (at most 64)")
    return value


def input_size(text):
    """'256' -> [256, 256]; '256x192' -> [256, 192] (height x width), multiples of 32."""
    try:
        size = [int(v) for v in text.lower().split("x")]
    except ValueError:
        size = []
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) <= 0 or size[0] % 32 or size[1] % 32:
        raise argparse.ArgumentTypeError(f"expected HEIGHT[xWIDTH], positive multiples of 32 "
                                         f"(the backbone stride), got {text!r}")
    return size
