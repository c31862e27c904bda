"""Evaluation across processes and machines, on torch.distributed as `torchrun` launches it.

`torchrun --nproc-per-node N [--nnodes M ...] -m bild.cli bench ... --json OUT` runs one bench per
rank on a shard of the prompts (rank r takes prompts r, r + N, r + 2N, ...: strided, deterministic),
every method side by side on the rank's own device (`cuda:LOCAL_RANK` on GPUs), so every ratio is
still measured on one device. Each rank writes its shard as any bench writes its report
(`OUT.rank-R-of-N.json` and its samples: resumable on its own), and rank 0 merges the shards into
OUT from their per-prompt records (bild/lab/bench.py's `merge_shards`): counts and histograms added,
speeds as ratios of sums, medians and the oracle recomputed, and which rank measured each prompt.

Before they measure, the ranks agree (`agree`): one setup, one cost model (rank 0's, sent to the
others), no more ranks than prompts; otherwise rank 0 says why in one line and every rank exits 2
(`RankError` is the quiet exit of the others). Coordination runs on a gloo group, so it needs no
GPU. Without torchrun (`world()` is (0, 1)) nothing here runs. Tensor parallelism (`--large-tp`) is
the other use of ranks: there every rank runs the same prompts and only rank 0 writes.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from bild.errors import BildError

TIMEOUT = timedelta(minutes=30)  # how long a rank waits for the others at a meeting point


class RankError(BildError):
    """A refusal rank 0 has already explained: the other ranks exit quietly."""


def world() -> tuple[int, int]:
    """(this process's rank, the number of ranks) as torchrun sets them; (0, 1) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def start() -> None:
    """Join the ranks' group: gloo for what the ranks say to each other (CPU objects), and NCCL for the CUDA
    tensors a tensor-parallel model exchanges."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():  # this rank's GPU is the current one: NCCL, streams and graphs go there
            torch.cuda.set_device(local_rank())
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo", timeout=TIMEOUT)


def gather(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    import torch.distributed as dist

    found: list[Any] = [None] * world()[1]
    dist.all_gather_object(found, value)
    return found


def agree(values: dict[str, Any], what: str) -> None:
    """Refuse, on every rank, unless every rank holds the same `values` (rank 0 names the keys that differ)."""
    found = gather(values)
    differ = sorted({k for v in found for k in v if v.get(k) != found[0].get(k)})
    if differ:
        ranks = [r for r, v in enumerate(found) if any(v.get(k) != found[0].get(k) for k in differ)]
        fail(f"the ranks disagree on {what} ({', '.join(differ)} differ on rank(s) {', '.join(map(str, ranks))}): "
             "launch every rank with the same command and files")


def fail(message: str) -> None:
    """Every rank stops: rank 0 with `message`, the others quietly."""
    if world()[0] == 0:
        raise BildError(message)
    raise RankError(message)


def settle(error: str | None) -> None:
    """A meeting point after each rank's work: if any rank failed, every rank stops, rank 0 saying which."""
    found = gather(error)
    failed = [(r, e) for r, e in enumerate(found) if e]
    if failed:
        fail(f"rank {failed[0][0]} failed: {failed[0][1]}" + (f" (and {len(failed) - 1} more)" if len(failed) > 1
                                                               else ""))


def share(value: Any) -> Any:
    """Rank 0's `value`, on every rank."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_path(out: str | Path, rank: int, size: int) -> Path:
    """Where rank `rank` of `size` writes its shard of the report at `out`."""
    out = Path(out)
    return out.with_name(f"{out.name.removesuffix('.json')}.rank-{rank}-of-{size}.json")


def shard(count: int, rank: int, size: int) -> list[int]:
    """The prompt indices of a rank: strided, so every rank gets prompts from all over the set."""
    return list(range(rank, count, size))
