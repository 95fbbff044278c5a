"""Run every benchmark, print a table, write benchmarks/results.json.

`python -m benchmarks.run audit sweeps` runs only those modules and replaces their rows in
results.json, keeping the others' (each row says the machine it was measured on)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from benchmarks import (
    attacks,
    audit,
    big_store,
    defence_loop,
    driver_scale,
    search,
    server_scale,
    sweeps,
    tracking_load,
    tracking_server,
    train_loop,
    worker_memory,
)
from sweeps.console import quiet_libraries
from tracking.runs import MLFLOW_QUIET_ENV

RESULTS = Path(__file__).with_name("results.json")


MODULES = {
    m.__name__.rsplit(".", 1)[-1]: m
    for m in (train_loop, defence_loop, attacks, audit, big_store, sweeps, search, worker_memory,
              tracking_server, tracking_load, server_scale, driver_scale)
}  # fmt: skip


def main(only: list[str]) -> None:
    unknown = sorted(set(only) - set(MODULES))
    if unknown:
        sys.exit(f"no benchmark named {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    quiet_libraries(verbose=False)  # MLflow's INFO lines as the benchmark stores are made
    os.environ.update(MLFLOW_QUIET_ENV)  # as the CLI does: no download bar per artifact read
    results = []
    for name, module in MODULES.items():
        if not only or name in only:
            results.extend(dict(r, module=name) for r in module.run())
    if only and RESULTS.exists():  # keep the other modules' rows, in their order
        kept = [r for r in json.loads(RESULTS.read_text()) if r.get("module") not in only]
        results = kept + results
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    width = max(len(r["name"]) for r in results)
    print(f"{'benchmark':<{width}}  {'value':>10}  {'baseline':>10}  {'ratio':>6}  unit")
    for r in results:
        print(
            f"{r['name']:<{width}}  {r['value']:>10}  {r['baseline']:>10}  {r['ratio']!s:>6}  "
            f"{r['unit']}"
        )
    print(f"machine: {results[0]['machine']}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:])
