"""A trial worker's memory: reading it, giving back what a trial freed, and what a trial needs.

Ray Tune reuses a worker process for trial after trial (`reuse_actors`), and Ray reuses task
workers for audit after audit, so whatever one trial leaves behind, the next one carries. What
grew here was not a Python object but glibc's heap. The attacks (APGD-T above all) allocate
thousands of short-lived tensors whose sizes change as points are fooled. After the first large
block is freed, glibc's dynamic mmap threshold moves allocations of up to 32 MiB from mmap onto
its heaps, and it keeps the freed heap pages in the process. Tune runs each trial in a new
thread, so the pages spread over several arenas. Measured on the MNIST subset (MLP 200-200, 500
evaluation points, one slot): a worker grew from 0.9 to 6.9 GB of anonymous memory in 12 trials.

`release_freed_memory` at the end of every trial and audit (a garbage collection, then glibc's
`malloc_trim(0)`, which returns the free pages of every arena) keeps a worker flat, and costs
milliseconds. Fixing the mmap threshold instead (`MALLOC_MMAP_THRESHOLD_`) also keeps memory
flat, but it made training 1.9x and the attacks 2.6x slower: every large tensor then faults in
fresh pages. A trial's own peak is bounded by `evaluation.attack_batch_size`: the attacks' heap
grows with the number of points attacked at once (up to about 1,000 times one batch of inputs).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

MIB = 1 << 20
GIB = 1 << 30
# Measured, not derived (make bench, `worker memory`): a Ray worker that imported torch,
# MLflow and the attacks holds about 1.0 to 1.3 GB between trials; while attacking a batch,
# glibc's heap grows by 400 to 1,050 times the batch's input bytes (APGD-T alone on 100 to
# 2,000 MNIST points; whole trials of the 200-200 MLP on 500 points). The budget rounds both up.
WORKER_BASELINE_BYTES = int(1.3 * GIB)
ATTACK_HEAP_FACTOR = 1200
FLOAT32_BYTES = 4

_trials_run = 0  # trials and audits this worker process has run: the only state kept on purpose


@dataclass(frozen=True)
class MemoryReading:
    """One process's memory, in bytes: resident, private (anonymous: heap, tensors; not the
    shared libraries or the mapped dataset cache), and the resident peak since the last
    `reset_peak`."""

    resident: int
    private: int
    peak: int


@lru_cache(maxsize=1)
def _libc():
    """glibc, or None where there is none (macOS, musl): there the release is a collection only."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> None:
    """Collect reference cycles (tensors held by closures, generators, autograd graphs), then
    hand every free heap page back to the operating system. The collection scans only what
    this trial made: `begin_trial` froze everything older."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def freeze_survivors() -> None:
    """Collect, then freeze what survived out of every later collection (`gc.freeze`), so a
    trial's collections scan only the objects it makes itself.

    Run at a trial's start, when the previous trial has returned and its garbage is gone, what
    survives is the imported libraries (some 760,000 objects: a full collection over them took
    0.35 s per trial, a third of a near-empty trial's worker time) and what torch keeps for good
    from each trial's model export (about 290 objects, held through C++ references no
    collection can break: measured with torch 2.14). Frozen once, as before, those leftovers
    piled up unfrozen and the collection at each trial's end grew with the trials the worker had
    run: 0.45 s of wall per trial around trial 800, 0.70 around 2,350. Frozen at every start,
    the collection costs what one trial made. What it costs: an object alive at a trial's start
    that later becomes cyclic garbage (Tune's own per-trial objects, made before the trial
    function runs) is never collected; `benchmarks/worker_memory.py` measures what a worker
    carries across trials."""
    gc.collect()
    gc.freeze()


def reset_peak() -> None:
    """Start a new resident peak (Linux: writing 5 to clear_refs resets VmHWM)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def read_memory() -> MemoryReading | None:
    """This process's memory from /proc (None off Linux)."""
    try:
        rollup = Path("/proc/self/smaps_rollup").read_text()
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kib = {}
    for line in (*rollup.splitlines(), *status.splitlines()):
        key, _, rest = line.partition(":")
        if key in ("Rss", "Anonymous", "VmHWM"):
            kib[key] = int(rest.split()[0])
    return MemoryReading(kib["Rss"] * 1024, kib["Anonymous"] * 1024, kib["VmHWM"] * 1024)


def begin_trial() -> int:
    """Count this trial, freeze what came before it out of its collections and start its
    peak; returns how many this process has run, this one
    included (1 in a fresh worker)."""
    global _trials_run
    _trials_run += 1
    freeze_survivors()
    reset_peak()
    return _trials_run


def trial_budget_bytes(
    input_shape: tuple[int, ...], dataset_points: int, attack_batch_size: int
) -> int:
    """What one trial's worker may peak at: the worker's baseline, the dataset as float32, and
    the attacks' heap for one batch. An upper estimate for packing trials onto nodes."""
    features = math.prod(input_shape)
    dataset = dataset_points * features * FLOAT32_BYTES
    attack = ATTACK_HEAP_FACTOR * attack_batch_size * features * FLOAT32_BYTES
    return WORKER_BASELINE_BYTES + dataset + attack


def working_set_bytes(
    input_shape: tuple[int, ...], dataset_points: int, attack_batch_size: int, parameters: int
) -> int:
    """What a trial's tensors need at once, at most: the dataset, the model with its gradient
    and Adam's two moments, and about 30 batch-sized tensors (APGD keeps some 15 copies of the
    batch: iterate, best, gradient, momentum, ...; autograd and scoring add as many)."""
    features = math.prod(input_shape)
    batch = attack_batch_size * features * FLOAT32_BYTES
    return dataset_points * features * FLOAT32_BYTES + 4 * parameters * FLOAT32_BYTES + 30 * batch
