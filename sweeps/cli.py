"""`satsweep` command line. Usage errors (bad flags, bad specs, missing data) exit with 2 and
one readable message; a sweep whose trials failed exits with 1.

The read commands (`best`, `export`, `report`) read a sweep as its record (`tracking.record`)
and judge it by the rule the sweep logged (`selection.*` params); their rule flags override it
and say so."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sweeps.spec import SpecError, load_spec
from tracking import metric_names as names
from tracking.runs import (
    DEFAULT_DB,
    MLFLOW_QUIET_ENV,
    absolute_uri,
    redact_uri,
    resolve_tracking_uri,
)
from tracking.store import SERVER_TIMEOUT_S, StoreError, check_store

if TYPE_CHECKING:
    from tracking.rules import SelectionRule

# Each command imports the heavy libraries it needs (torch, Ray, MLflow, scipy) when it runs:
# `--help` and a refused spec answer in about a second instead of five.

USAGE_ERROR = 2
INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C
UI_START_TIMEOUT_S = 180  # MLflow's UI takes 10-30 s to answer on a loaded 2-core machine
DRY_RUN_ROWS = 50  # trials listed by --dry-run without --all
# MLflow server workers on PostgreSQL: two per core of the 2-core machine it was measured on
# (README, 'The tracking server's store'); --workers for a bigger head
POSTGRES_WORKERS = 4


class UsageError(ValueError):
    """A flag or input the command cannot use: exit 2 with this message."""


# ---- the parser, a function per command ------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="satsweep",
        description="Sweeps of saturation-penalised networks on Ray Tune, tracked in MLflow.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_run_parser, _best_parser, _compare_parser, _export_parser, _server_parser,
                _ui_parser, _report_parser):  # fmt: skip
        add(sub)
    return parser


def _run_parser(sub) -> None:
    run = sub.add_parser("run", help="launch a sweep from a YAML spec")
    run.add_argument("spec", help="path of the sweep spec, e.g. sweeps/quickstart.yaml")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                     "then the spec's tracking_uri, then ./mlflow.db)")  # fmt: skip
    run.add_argument("--storage-path", help="where Ray keeps results and checkpoints (default: "
                     "the spec's storage_path)")  # fmt: skip
    run.add_argument("--dry-run", action="store_true",
                     help="check everything, print the trials and exit")  # fmt: skip
    run.add_argument("--all", action="store_true", help="with --dry-run: list every trial")
    run.add_argument("--yes", action="store_true", help="run a grid of more than the spec's "
                     "confirm_above trials (default 1000) without asking")  # fmt: skip
    run.add_argument("--address", help="Ray cluster to run on: auto, or ray://HOST:10001 "
                     "(default: RAY_ADDRESS, else a new local Ray instance)")  # fmt: skip
    run.add_argument("-v", "--verbose", action="store_true", help="also show Ray Tune's "
                     "progress table, result boxes and the workers' own output")  # fmt: skip
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue a crashed or interrupted "
        "sweep: finished trials are kept, unfinished ones resume from checkpoints",
    )


def _best_parser(sub) -> None:
    best = sub.add_parser("best", help="rank a sweep's trials by its masking-aware rule")
    best.add_argument("sweep", help="the sweep's name (its MLflow experiment)")
    _store_flag(best)
    _rule_flags(best)
    best.add_argument("--top", type=int, default=10, help="rows to show (default 10)")
    best.add_argument("--all", action="store_true", help="show every trial")
    best.add_argument("--json", action="store_true", help="print the ranking as JSON")
    best.add_argument("--record", action="store_true", help="write the rule, its inputs and "
                      "the champion to the sweep run's tags (satsweep.selection.*); without it "
                      "`best` only reads")  # fmt: skip


def _compare_parser(sub) -> None:
    compare = sub.add_parser(
        "compare",
        help="compare two trials or configurations of a sweep "
        "point by point: the difference, its interval and a test",
    )
    compare.add_argument("sweep", help="the sweep's name")
    compare.add_argument("a", help="a trial's name or run id, or a configuration: key=value,... "
                         "(e.g. defence=pgd,lam=1,activation=relu)")  # fmt: skip
    compare.add_argument("b", help="the same, for the other side")
    compare.add_argument("--eps", type=float, help="the budget (default: the sweep's rule's)")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")
    _store_flag(compare)


def _export_parser(sub) -> None:
    export = sub.add_parser("export", help="export the champion (or a given trial) to a folder")
    export.add_argument(
        "sweep_or_run",
        metavar="SWEEP|RUN_ID",
        help="a sweep name (its champion by the rule) or a trial's run id",
    )
    export.add_argument("--out", required=True, type=Path, help="new or empty folder")
    export.add_argument("--champion", action="store_true", help="with a run id: also point the "
                        "registry alias 'champion' at it (a sweep name always does: its run is "
                        "the champion by the rule)")  # fmt: skip
    _store_flag(export)
    _rule_flags(export)


def _server_parser(sub) -> None:
    server = sub.add_parser("server", help="run the MLflow tracking server a cluster logs to: "
                            "SQL backend, proxied artifacts (workers need no storage "
                            "credentials), password authentication")  # fmt: skip
    server.add_argument("--host", help="address to bind (default: this host's address on the "
                        "cluster network, which requires MLFLOW_TRACKING_USERNAME/PASSWORD; "
                        "127.0.0.1 serves this machine only)")  # fmt: skip
    server.add_argument("--port", type=int, default=5000)
    server.add_argument(
        "--backend-store-uri",
        default=f"sqlite:///{DEFAULT_DB}",
        help="SQL store for runs (default ./mlflow.db, made absolute)",
    )
    server.add_argument(
        "--postgres",
        metavar="DIR",
        help="run the store on a PostgreSQL kept in DIR, started here (and stopped with the "
        "server); for many concurrent trials, where SQLite takes one writer at a time",
    )
    server.add_argument(
        "--workers",
        type=int,
        help="MLflow server workers (default 1 on SQLite, which takes one writer at a time; "
        f"{POSTGRES_WORKERS} on PostgreSQL)",
    )
    server.add_argument(
        "--artifacts-destination",
        default="mlartifacts",
        help="where the server stores artifacts (a folder, s3://, gs://)",
    )


def _ui_parser(sub) -> None:
    ui = sub.add_parser("ui", help="open MLflow's UI on the sweep store, on 127.0.0.1")
    _store_flag(ui)
    ui.add_argument("--sweep", help="the sweep whose runs to open (default: the latest one)")
    ui.add_argument("--port", type=int, help="port to serve on (default: a free one)")


def _report_parser(sub) -> None:
    report = sub.add_parser("report", help="log the sweep report to its parent run")
    report.add_argument("sweep")
    _store_flag(report)
    _rule_flags(report)


def _rule_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that override the rule the sweep logged (each defaults to the sweep's own)."""
    parser.add_argument(
        "--eps", type=float, help="budget whose worst case is maximised (default: the sweep's)"
    )
    parser.add_argument(
        "--min-clean-acc", type=float, help="clean accuracy floor (default: the sweep's)"
    )
    flagged = parser.add_mutually_exclusive_group()
    flagged.add_argument("--include-flagged", action="store_const", const=True,
                         dest="include_flagged", help="also consider unaudited trials with "
                         "masking suspected")  # fmt: skip
    flagged.add_argument("--exclude-flagged", action="store_const", const=False,
                         dest="include_flagged", help="leave out flagged trials that are not "
                         "audited, whatever the sweep's rule says")  # fmt: skip


def _store_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, then ./mlflow.db)",
    )


# ---- shared by the commands ------------------------------------------------------------------


def existing_store(cli_uri: str | None) -> str:
    """The tracking URI of a store that must already exist (reading never creates one), and
    answer quickly: MLflow's client would retry a silent server for minutes."""
    uri = resolve_tracking_uri(cli_uri)
    check_store(uri, must_exist=True)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(SERVER_TIMEOUT_S * 2))
    return uri


def read_sweep(args):
    """(client, the sweep's record, the rule with the flags applied) for a read command; the
    rule's overrides are said on stderr."""
    from mlflow.tracking import MlflowClient

    from tracking.select import check_evaluated_at, load_sweep, sweep_rule

    client = MlflowClient(existing_store(args.tracking_uri))
    record = load_sweep(client, args.sweep)
    rule, said = sweep_rule(record).overridden(
        eps=args.eps, min_clean_acc=args.min_clean_acc, include_flagged=args.include_flagged
    )
    _check_rule(rule)
    check_evaluated_at(record, rule.eps)
    for line in said:
        print(f"satsweep: {line}", file=sys.stderr)
    return client, record, rule


def _check_rule(rule: SelectionRule) -> None:
    from tracking.select import SelectionError

    if not 0 < rule.eps <= 1 or not 0 <= rule.min_clean_acc <= 1:
        raise SelectionError("--eps must be in (0, 1] and --min-clean-acc in [0, 1]")


def _fail(message: str) -> int:
    print(f"satsweep: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def _fmt(value: float | None) -> str:
    from tracking.evidence import shown

    return shown(value, None)


# ---- run -------------------------------------------------------------------------------------


def _print_search(spec) -> None:
    """What a search samples, where, and how many trials it runs."""
    from sweeps.space import cell_space
    from sweeps.spec import search_cells

    s = spec.search
    sampler = {"tpe": "by Optuna's TPE", "gp": "by Optuna's Gaussian process (GPSampler)"}
    by = sampler[s.sampler] if s.name == "optuna" else "at random (Optuna's RandomSampler)"
    objectives = " and ".join(s.objectives)
    front = "their Pareto front" if len(s.objectives) > 1 else "one objective"
    seeds = list(spec.grid.seeds)
    print(
        f"search {s.name}: sampled {by}, seed {s.seed}, maximising {objectives} "
        f"({front}), each configuration over seeds {seeds}, the searcher told their mean"
    )
    for key, dist in s.space.items():
        print(f"  {key:<28} {dist.describe()}")
    cells = search_cells(spec)
    print(f"{len(cells)} grid cell{'s' if len(cells) > 1 else ''} (the listed axes but the seed):")
    for cell in cells:
        listed = ", ".join(f"{k} {v}" for k, v in cell.items())
        space = cell_space(s.space, spec.defences[cell["defence"]])
        what = ", ".join(space) or "nothing sampled"
        print(f"  {listed}: {spec.samples_in(cell)} configuration(s) of {what} x "
              f"{len(seeds)} seed(s)")  # fmt: skip


def _print_trials(spec, show_all: bool) -> None:
    if spec.search.sampled:
        _print_search(spec)
    else:
        _print_grid(spec, show_all)
    print(f"{spec.num_trials} trials, {spec.training.epochs} epochs each, dataset "
          f"{spec.dataset.name}: every check passed")  # fmt: skip
    n = evaluation_points(spec)
    print(cost_line(spec, n))
    print(power_line(spec, n))


def _print_grid(spec, show_all: bool) -> None:
    from sweeps.grid import grid_points, naming, trial_name

    rows, order = grid_points(spec), naming(spec)
    hidden = 0 if show_all else max(0, len(rows) - DRY_RUN_ROWS)
    rows = rows[: len(rows) - hidden]
    width = max(len(trial_name(r, order)) for r in rows)
    print(f"{'run name':<{width}}  {'architecture':<18} {'activation':<10} {'λ':>8} "
          f"{'defence':<8} {'seed':>4}")  # fmt: skip
    for r in rows:
        kind = spec.defences[r["defence"]].kind
        print(f"{trial_name(r, order):<{width}}  {r['arch']:<18} {r['activation']:<10} "
              f"{r['lam']:>8g} {kind:<8} {r['seed']:>4}")  # fmt: skip
    if hidden:
        print(f"... and {hidden} more (--all lists them)")


def evaluation_points(spec) -> int:
    from trainables.data import load_dataset

    d = spec.dataset
    return min(spec.evaluation.size, len(load_dataset(d.name, d.data_dir, d.download).y_test))


def power_line(spec, n: int) -> str:
    """What the sweep can tell apart, before it trains: the smallest difference of two
    configurations a paired comparison detects (80 % power, 5 % level) at its points and seeds."""
    from tracking.evidence import ASSUMED_DISCORDANCE, detectable_difference

    k = len(spec.grid.seeds)
    mde = 100 * detectable_difference(n, k)
    seeds = f"{k} seed{'s' if k > 1 else ''}"
    return (f"with {n} points and {seeds} per configuration, differences under about {mde:.1f} "
            f"points cannot be told apart (80 % power, 5 % level, if {ASSUMED_DISCORDANCE:.0%} of "
            "the points disagree between two compared models; spread between seeds widens it): "
            "raise evaluation.size or add grid.seeds to see smaller ones")  # fmt: skip


def cost_line(spec, n: int) -> str:
    """What the evaluation costs per trial, in attack-point-steps, before anything runs."""
    from trainables.audit import evaluation_cost

    cost = evaluation_cost(spec, n)
    line = f"evaluation: at most {_steps(cost.cheap)} attack-point-steps per trial (cheap tier)"
    if not spec.audit.enabled or not cost.audit:
        return line + "; no audit"
    parts = ", ".join(f"{name} {_steps(v)}" for name, v in cost.audit.items())
    reused = (f"; {', '.join(cost.reused)} run once, as AutoAttack's stage and for its own "
              "figure" if cost.reused else "")  # fmt: skip
    twice = ("; Square runs twice (audit.square_queries 5000, AutoAttack's, would make one run "
             "serve both)" if "square" in cost.audit and "autoattack/square" in cost.audit
             else "")  # fmt: skip
    return (f"{line}, and at most {_steps(sum(cost.audit.values()))} more per audited trial "
            f"({parts}{reused}){twice}; attacks stop on the points they break")  # fmt: skip


def _steps(count: int) -> str:
    return f"{count / 1e6:.1f} M" if count >= 100_000 else f"{count:,}"


def cmd_run(args) -> int:
    try:
        spec, text = load_spec(args.spec)
    except SpecError as err:
        return _fail(str(err))
    from sweeps.preflight import PreflightError, check_before_ray

    tracking_uri = resolve_tracking_uri(args.tracking_uri, spec.tracking_uri)
    storage_path = args.storage_path or spec.storage_path
    try:  # the same checks for a dry run: it must refuse what the real run refuses
        check_before_ray(spec, storage_path, tracking_uri, args.address, args.resume)
    except (PreflightError, ValueError) as err:
        return _fail(str(err))
    if args.dry_run:
        _print_trials(spec, args.all)
        return 0
    limit = spec.confirm_above
    if spec.num_trials > limit and not args.yes and not _confirmed(spec.num_trials):
        return _fail(
            f"the grid has {spec.num_trials} trials (more than confirm_above, {limit}); check it "
            "with --dry-run, then pass --yes to run it (or raise confirm_above in the spec)"
        )
    return _launch(args, spec, text, tracking_uri, storage_path)


def _launch(args, spec, text: str, tracking_uri: str, storage_path: str) -> int:
    from sweeps.launch import SweepInterrupted, run_sweep
    from sweeps.preflight import PreflightError

    try:
        outcome = run_sweep(spec, text, tracking_uri, storage_path, resume=args.resume,
                            address=args.address, verbose=args.verbose)  # fmt: skip
    except PreflightError as err:  # e.g. nothing to resume, node-local storage on a cluster
        return _fail(str(err))
    except SweepInterrupted:
        from sweeps.console import command

        resume = " ".join(["run", args.spec, "--resume", *_passed_on(args)])
        print(f"satsweep: interrupted; the sweep's runs are marked KILLED. Continue it with:\n"
              f"  {command()} {resume}", file=sys.stderr)  # fmt: skip
        return INTERRUPTED
    except ConnectionError as err:
        return _fail(f"cannot reach the Ray cluster at {args.address or 'RAY_ADDRESS'}: {err}")
    if outcome is None:
        return 0
    return 1 if outcome.failed else 0


def _confirmed(trials: int) -> bool:
    """Ask on a terminal; without one (scripts, CI) the answer is no."""
    if not sys.stdin.isatty():
        return False
    answer = input(f"satsweep: run all {trials} trials? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _passed_on(args) -> list[str]:
    """The flags a resumed run must repeat to find the same sweep."""
    flags = []
    for flag in ("tracking_uri", "storage_path", "address"):
        value = getattr(args, flag)
        if value:
            flags += [f"--{flag.replace('_', '-')}", redact_uri(value)]
    return flags


# ---- best ------------------------------------------------------------------------------------


def cmd_best(args) -> int:
    from tracking.record import configurations
    from tracking.select import configuration_verdict, record_selection, select_champion

    if args.top < 1:
        return _fail("--top must be >= 1")
    client, record, rule = read_sweep(args)
    trials = list(record.trials.values())
    champion = select_champion(trials, rule)
    configs = configurations(trials)
    verdicts = {c.name: configuration_verdict(c, rule) for c in configs}
    ranked = sorted(configs, reverse=True, key=lambda c: (verdicts[c.name][0],
                    c.choosing_worst(rule.eps) or -1, c.clean))  # fmt: skip
    if args.json:
        print(json.dumps(_ranking_json(record, ranked, verdicts, champion, rule), indent=2))
    else:
        _print_ranking(record, ranked, verdicts, champion, rule, args)
    if args.record:
        record_selection(client, record.parent_run_id, champion, rule)
        print(f"recorded this selection on the sweep run {record.parent_run_id} (tags "
              "satsweep.selection.*)", file=sys.stderr if args.json else sys.stdout)  # fmt: skip
    return 0


def _configuration_json(c, rule: SelectionRule, verdict_: tuple[bool, str]) -> dict:
    e = rule.eps
    first = c.trials[0]
    spread = c.spread(e)
    return {
        "configuration": c.name, "seeds": c.seeds, "runs": [t.run_id for t in c.trials],
        "arch": first.arch, "activation": first.activation, "lam": first.lam,
        "defence": first.defence, "n_points": first.eval_points,
        "clean": c.clean, "clean_ci": c.clean_interval(),
        "worst": c.worst(e), "worst_ci": c.worst_interval(e),
        "worst_selection": c.worst_on(e, names.SELECTION),
        "worst_report": c.worst_on(e, names.REPORT),
        "worst_report_ci": c.worst_interval(e, names.REPORT),
        "worst_sd": spread[0] if spread else None, "worst_min": spread[1] if spread else None,
        "worst_max": spread[2] if spread else None, "fgsm": c.fgsm(e),
        "flags": sorted({f for t in c.trials for f in t.flags}),
        "audited": all(t.audited for t in c.trials), "collapsed": c.collapsed,
        "defence_failures": c.defence_failures,
        "eligible": verdict_[0], "why": verdict_[1],
    }  # fmt: skip


def _ranking_json(record, ranked, verdicts, champion, rule: SelectionRule) -> dict:
    """The ranking for scripts: every configuration, in order, with the rule's verdict, and the
    champion: the exported model and the figure it is reported with."""
    from tracking.select import RULE

    c, e = champion.configuration, rule.eps
    return {
        "sweep": record.name,
        **rule.model_dump(),
        "rule": RULE,
        "champion": champion.model.run_id,
        "champion_configuration": c.name,
        "champion_seed": champion.model.seed,
        "champion_worst_report": c.worst_on(e, names.REPORT),
        "champion_worst_report_ci": c.worst_interval(e, names.REPORT),
        "champion_worst_selection": c.worst_on(e, names.SELECTION),
        "configurations": [_configuration_json(x, rule, verdicts[x.name]) for x in ranked],
    }


def _print_ranking(record, ranked, verdicts, champion, rule: SelectionRule, args) -> None:
    from sweeps.console import champion_lines
    from tracking.evidence import shown
    from tracking.select import pareto_front

    shown_rows = ranked if args.all else ranked[: args.top]
    width = max(len(c.name) for c in shown_rows)
    e = f"{rule.eps:g}"
    n = ranked[0].trials[0].eval_points
    print(f"sweep {record.name}: {len(ranked)} configurations ({len(record.trials)} trials); "
          f"rule: {rule.describe()}")  # fmt: skip
    if n:
        print(f"[...]: 95 % intervals ({n} evaluation points; Wilson for one seed, Student's t "
              f"over the seeds for several); ranked by the worst case on the {n - n // 2} "
              f"selection points")  # fmt: skip
    print(f"{'':2}{'configuration':<{width}}  {'seeds':>5}  {'clean':>22}  "
          f"{'worst@' + e + ' [95% CI]':>24}  {'ranked':>6}  in or out, and why")  # fmt: skip
    for c in shown_rows:
        mark = "*" if champion is not None and c.name == champion.configuration.name else " "
        print(f"{mark} {c.name:<{width}}  {len(c.trials):>5}  "
              f"{shown(c.clean, c.clean_interval()):>22}  "
              f"{shown(c.worst(rule.eps), c.worst_interval(rule.eps)):>24}  "
              f"{_fmt(c.choosing_worst(rule.eps)):>6}  {verdicts[c.name][1]}")  # fmt: skip
    if len(shown_rows) < len(ranked):
        print(f"showing {len(shown_rows)} of {len(ranked)} configurations (--all for the rest)")
    print()
    for line in champion_lines(champion, rule.eps):
        print(line)
    print(f"exported run {champion.model.run_id} ({champion.model.name}); naive FGSM "
          f"{_fmt(champion.configuration.fgsm(rule.eps))}")  # fmt: skip
    print(f"Pareto front, clean vs worst case at eps {e}:")
    for c in pareto_front(record.trials.values(), rule.eps):
        print(f"  clean {c.clean:.3f}  worst {_fmt(c.worst(rule.eps))}  {c.name}"
              + ("  [masking suspected]" if c.flagged else ""))  # fmt: skip


# ---- compare ---------------------------------------------------------------------------------


def cmd_compare(args) -> int:
    from mlflow.tracking import MlflowClient

    from tracking.compare import paired, resolve
    from tracking.select import check_evaluated_at, load_sweep, sweep_rule

    client = MlflowClient(existing_store(args.tracking_uri))
    record = load_sweep(client, args.sweep)
    eps = args.eps if args.eps is not None else sweep_rule(record).eps
    check_evaluated_at(record, eps)
    result = paired(client, resolve(record, args.a), resolve(record, args.b), eps)
    if args.json:
        body = {"a": result.a.name, "b": result.b.name, "eps": eps,
                **result.worst.as_json(),
                "clean": result.clean.as_json() if result.clean else None}  # fmt: skip
        print(json.dumps(body, indent=2))
        return 0
    print(result.sentence())
    if result.clean:
        c = result.clean
        print(f"clean accuracy on the same points: {100 * c.diff:+.1f} points "
              f"[{100 * c.ci_low:+.1f}, {100 * c.ci_high:+.1f}], p = {c.p_value:.2g}")  # fmt: skip
    return 0


# ---- export, report --------------------------------------------------------------------------


def cmd_export(args) -> int:
    from tracking.export import export_model

    info = export_model(existing_store(args.tracking_uri), args.sweep_or_run, args.out,
                        champion=args.champion, eps=args.eps, min_clean_acc=args.min_clean_acc,
                        include_flagged=args.include_flagged)  # fmt: skip
    print(f"exported {info['run_name']} (run {info['run_id']}) to {info['out']}: model.pt2, "
          "state_dict.pt, config.json, metrics.json; an MLflow Model (MLmodel)")  # fmt: skip
    alias = ", alias 'champion'" if info["champion"] else " (alias 'champion' unchanged)"
    print(f"registered model {info['registered_model']!r} version {info['version']}{alias}")
    print(f"load it anywhere with torch only: torch.export.load('{info['out']}/model.pt2')"
          ".module()")  # fmt: skip
    if info["champion"]:
        print(f"or through MLflow: mlflow.pyfunc.load_model("
              f"'models:/{info['registered_model']}@champion')")  # fmt: skip
    return 0


def cmd_report(args) -> int:
    from tracking.report import write_report

    client, record, rule = read_sweep(args)
    paths = write_report(client, record, rule)
    print(f"logged to the sweep run of {args.sweep!r}: {', '.join(paths)}")
    return 0


# ---- server, ui ------------------------------------------------------------------------------


def server_workers(args) -> int:
    """Several workers where the backend takes concurrent writers; one on SQLite."""
    sqlite = args.postgres is None and args.backend_store_uri.startswith("sqlite:")
    workers = args.workers if args.workers is not None else 1 if sqlite else POSTGRES_WORKERS
    if workers < 1:
        raise UsageError("--workers must be 1 or more")
    if sqlite and workers > 1:
        raise UsageError(
            f"--workers {workers} on a SQLite store: SQLite takes one writer at a time, so "
            "workers would only wait on each other (and fail with 'database is locked'); use "
            "--postgres DIR for a PostgreSQL store, or leave --workers out"
        )
    return workers


def cmd_server(args) -> int:
    if args.postgres and args.backend_store_uri != f"sqlite:///{DEFAULT_DB}":
        raise UsageError("give --postgres DIR or --backend-store-uri, not both")
    workers = server_workers(args)
    from ray.util import get_node_ip_address

    from tracking.server import ServerError, server_command

    host = args.host or get_node_ip_address()
    free_port(host, args.port)  # a busy port is a usage error, not a server that exits 0
    dest = args.artifacts_destination
    dest = dest if "://" in dest else str(Path(dest).resolve())
    postgres = None
    if args.postgres:
        from tracking.postgres import mlflow_uri, start_postgres

        postgres = start_postgres(Path(args.postgres).resolve())
        store = mlflow_uri(postgres)
    else:
        store = absolute_uri(args.backend_store_uri)
    try:
        argv, env = server_command(host, args.port, store, dest, workers)
    except ServerError as err:
        raise UsageError(str(err)) from None
    auth = ("password authentication" if "--app-name" in argv
            else "no authentication: this machine only")  # fmt: skip
    backend = f"PostgreSQL in {args.postgres}" if postgres else redact_uri(store)
    print(f"satsweep: MLflow server on http://{host}:{args.port} ({auth}; {backend}, {workers} "
          f"worker{'s' if workers > 1 else ''}); trials and commands log to it with "
          f"--tracking-uri http://{host}:{args.port}", flush=True)  # fmt: skip
    if postgres is None:
        os.execve(argv[0], argv, env)  # replaces this process: Ctrl-C stops the server
    return serve_beside_postgres(argv, env)


def serve_beside_postgres(argv: list[str], env: dict[str, str]) -> int:
    """Run the MLflow server as a child, so that this process, which holds the PostgreSQL
    started for it, stops PostgreSQL once the server has stopped (Ctrl-C or SIGTERM). Killed
    outright, this process takes the MLflow server with it (`die_with_parent`); PostgreSQL
    stays up and the next `satsweep server --postgres` on the folder joins it."""
    import signal

    from tracking.server import die_with_parent, stop_process_group

    server = subprocess.Popen(argv, env=env, start_new_session=True, preexec_fn=die_with_parent)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        return server.wait()
    except KeyboardInterrupt:
        stop_process_group(server)
        return INTERRUPTED


def free_port(host: str, wanted: int | None) -> int:
    """`wanted` if it can be bound on `host`, else a UsageError; without `wanted`, a free port.
    SO_REUSEADDR as servers set it: a server restarted on its port is not refused for the
    closed connections the old one left in TIME_WAIT (a live listener still is)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, wanted or 0))
        except OSError as err:
            raise UsageError(
                f"port {wanted} on {host} is busy ({err.strerror}); pass another --port, "
                "or leave --port out to take a free one"
            ) from None
        return s.getsockname()[1]


def cmd_ui(args) -> int:
    from mlflow.tracking import MlflowClient

    from tracking.server import ServerError, ui_page, wait_until_answers

    uri = existing_store(args.tracking_uri)
    page = ui_page(MlflowClient(uri), args.sweep)  # before the server: a wrong name exits 2
    port = free_port("127.0.0.1", args.port)
    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    print(f"satsweep: starting MLflow's UI on the store {redact_uri(uri)} ...", flush=True)
    # MLflow's own start-up lines go to a log, so the console holds only the address
    with tempfile.NamedTemporaryFile("w+", prefix="satsweep-ui-", suffix=".log") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_answers(url, server, UI_START_TIMEOUT_S)
            print(f"satsweep: MLflow UI ready: {url}/{page.path}  ({page.what}; Ctrl-C stops)",
                  flush=True)  # fmt: skip
            return server.wait()
        except ServerError as err:  # the server itself failed: not a usage error
            log.seek(0)
            print(f"satsweep: error: {err}; its log ends:\n{log.read()[-2000:]}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            if server.poll() is None:
                server.terminate()
                server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    for key, value in MLFLOW_QUIET_ENV.items():  # before MLflow is imported (tracking/runs.py)
        os.environ.setdefault(key, value)
    args = _parser().parse_args(argv)
    command = {
        "run": cmd_run,
        "best": cmd_best,
        "compare": cmd_compare,
        "export": cmd_export,
        "report": cmd_report,
        "server": cmd_server,
        "ui": cmd_ui,
    }
    try:
        return command[args.command](args)
    except (UsageError, StoreError, LookupError) as err:  # LookupError: no such sweep, trial, eps
        return _fail(str(err))
    except BrokenPipeError:  # `satsweep best ... | head`: the reader left, so leave quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("satsweep: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
