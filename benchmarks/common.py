"""What every benchmark shares: the machine description and a median-of-repeats timer."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def machine() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, device {device}"
    )


def median_seconds(fn: Callable[[], None], repeats: int) -> float:
    """Median wall time of `repeats` calls, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def satsweep_seconds(*args: str, cwd: Path | None = None) -> float:
    """Wall seconds of one `satsweep` command as a user runs it (a fresh interpreter, imports
    included); a failure raises with its stderr."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sweeps.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=1800)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"satsweep {args[0]} failed: {done.stderr[-3000:]}")
    return time.perf_counter() - start


def result(name: str, value: float, unit: str, baseline: float) -> dict:
    """One row of results.json. A zero baseline gives ratio 1.0 when the value is zero too (a
    worst case of 0 against 0) and None otherwise."""
    ratio = round(value / baseline, 3) if baseline else (1.0 if value == 0 else None)
    return {
        "name": name,
        "value": round(value, 2),
        "unit": unit,
        "baseline": round(baseline, 2),
        "ratio": ratio,
        "machine": machine(),
    }
