"""`satsweep` command line. Usage errors (bad flags, bad specs, missing data) exit with 2 and
one readable message; a sweep whose trials failed exits with 1."""

from __future__ import annotations

import argparse
import sys

from sweeps.spec import SpecError, load_spec
from tracking.runs import resolve_tracking_uri
from trainables.data import DatasetNotFoundError

USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="satsweep",
        description="Sweeps of saturation-penalised networks on Ray Tune, tracked in MLflow.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="launch a sweep from a YAML spec")
    run.add_argument("spec", help="path of the sweep spec, e.g. sweeps/quickstart.yaml")
    run.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
        "then the spec's tracking_uri, then ./mlflow.db)",
    )
    run.add_argument(
        "--storage-path",
        help="where Ray keeps results and checkpoints (default: the spec's storage_path)",
    )
    run.add_argument("--dry-run", action="store_true", help="print the trials and exit")
    return parser


def _fail(message: str) -> int:
    print(f"satsweep: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def _print_trials(spec) -> None:
    from sweeps.launch import trial_rows

    rows = trial_rows(spec)
    width = max(len(r["run_name"]) for r in rows)
    print(f"{'run name':<{width}}  {'architecture':<18} {'activation':<10} {'λ':>8} {'seed':>4}")
    for r in rows:
        print(
            f"{r['run_name']:<{width}}  {r['arch']:<18} {r['activation']:<10} "
            f"{r['lam']:>8g} {r['seed']:>4}"
        )
    print(f"{len(rows)} trials, {spec.training.epochs} epochs each, dataset {spec.dataset.name}")


def cmd_run(args) -> int:
    try:
        spec, text = load_spec(args.spec)
    except SpecError as err:
        return _fail(str(err))
    if args.dry_run:
        _print_trials(spec)
        return 0
    from sweeps.launch import preflight_data, run_sweep

    try:
        preflight_data(spec)
    except (DatasetNotFoundError, ValueError) as err:
        return _fail(str(err))
    tracking_uri = resolve_tracking_uri(args.tracking_uri, spec.tracking_uri)
    outcome = run_sweep(spec, text, tracking_uri, args.storage_path or spec.storage_path)
    print(
        f"satsweep: sweep {spec.name!r}: {outcome.finished} trials finished, "
        f"{outcome.failed} failed; parent run {outcome.parent_run_id}"
    )
    return 1 if outcome.failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return {"run": cmd_run}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
