"""Run every benchmark, print a table, write benchmarks/results.json."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import (
    attacks,
    big_store,
    defence_loop,
    sweeps,
    tracking_server,
    train_loop,
    worker_memory,
)
from sweeps.console import quiet_libraries

RESULTS = Path(__file__).with_name("results.json")


def main() -> None:
    quiet_libraries(verbose=False)  # MLflow's INFO lines as the benchmark stores are made
    results = []
    modules = (train_loop, defence_loop, attacks, big_store, sweeps, worker_memory, tracking_server)
    for module in modules:
        results.extend(module.run())
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    width = max(len(r["name"]) for r in results)
    print(f"{'benchmark':<{width}}  {'value':>10}  {'baseline':>10}  {'ratio':>6}  unit")
    for r in results:
        print(
            f"{r['name']:<{width}}  {r['value']:>10}  {r['baseline']:>10}  {r['ratio']:>6}  "
            f"{r['unit']}"
        )
    print(f"machine: {results[0]['machine']}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
