"""What `satsweep run` prints: a header, one line per finished trial with progress and ETA, the
audit's lines, and a closing summary with the next commands. Library chatter (Ray's tables,
result boxes, snapshot warnings, workers' output) stays off unless `-v` asks for it."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys

from tracking import metric_names as names
from tracking.evidence import shown
from tracking.runs import redact_uri, resolve_tracking_uri
from tracking.select import champion_or_none


def quiet_libraries(verbose: bool) -> None:
    """Silence what a researcher need not read: Ray Tune's repeated snapshot warning, Ray's
    and MLflow's INFO lines, and Python warnings from libraries. `verbose` keeps them."""
    if verbose:
        return
    # Ray Tune: "Set it to 0 to completely suppress this warning" (experiment_state.py)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray's new output engine prints its experiment box and paths even when silent; the
    # legacy one honours verbose=0
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune logs every failed attempt with its traceback; our own line names the trial and why
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    for name in ("ray", "ray.train", "mlflow", "alembic", "filelock"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Tune's "Trials did not complete" repeats what the closing lines say; its real errors raise
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    import warnings

    warnings.filterwarnings("ignore")
    _leave_worker_deaths_to_us()


RAYLET_DEATH_NOTICES = ("A worker died or was killed", "killed due to the node running low")


def _leave_worker_deaths_to_us() -> None:
    """The raylet tells the driver about every dead worker in a paragraph of its own, printed by
    Ray's error listener, which no setting turns off; the trial's line says the same in words
    (`sweeps.worker_deaths`), so those notices are dropped. Other raylet errors still print."""
    import ray._private.worker as ray_worker

    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "satsweep_quiet", False):
        return

    def print_to_stdstream(data, ignore_prefix):
        lines = data.get("lines", [])
        if data.get("pid") == "raylet" and any(n in line for line in lines
                                               for n in RAYLET_DEATH_NOTICES):  # fmt: skip
            return
        printer(data, ignore_prefix)

    print_to_stdstream.satsweep_quiet = True
    ray_worker.print_to_stdstream = print_to_stdstream


def say(message: str) -> None:
    print(f"satsweep: {message}", flush=True)


def warn(message: str) -> None:
    """Something the user may want to change, though the sweep can run as it is."""
    print(f"satsweep: warning: {message}", file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def summary(metrics: dict, eps: float) -> str:
    """`clean 0.962  worst@0.1 0.016  [flags]` from a trial's last result."""
    clean = metrics.get(names.CLEAN_ACC)
    worst = metrics.get(names.worst_case_acc(eps))
    text = f"clean {clean:.3f}" if isinstance(clean, float) else "clean –"
    text += f"  worst@{eps:g} {worst:.3f}" if isinstance(worst, float) else ""
    if metrics.get(names.COLLAPSED):
        return text + "  collapsed"
    if metrics.get(names.DIVERGED_AT_EPOCH):
        return text + f"  diverged at epoch {int(metrics[names.DIVERGED_AT_EPOCH])}"
    flags = metrics.get(names.FLAGS_REPORT, "")
    return text + (f"  flags: {flags}" if flags else "")


def command() -> str:
    """How the user can type `satsweep` again: plain when it is on PATH, else the path they
    ran (e.g. `.venv/bin/satsweep` after `make demo`)."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) != "satsweep":
        return "satsweep"
    on_path = shutil.which("satsweep")
    if on_path and os.path.realpath(on_path) == os.path.realpath(argv0):
        return "satsweep"
    return os.path.relpath(argv0) if not os.path.relpath(argv0).startswith("..") else argv0


def header(spec, tracking_uri: str) -> None:
    r = spec.resources
    say(
        f"sweep {spec.name!r}: {spec.num_trials} trials, {r.max_concurrent_trials} at a time "
        f"({r.cpus_per_trial:g} CPU, {r.gpus_per_trial:g} GPU each), "
        f"{spec.training.epochs} epochs, dataset {spec.dataset.name}"
    )
    say(f"MLflow store {redact_uri(tracking_uri)}; browse it with `{command()} ui"
        f"{store_flag(tracking_uri)}`")  # fmt: skip


def store_flag(tracking_uri: str) -> str:
    """` --tracking-uri ...` when the store is not the default one a command would find."""
    return (
        ""
        if tracking_uri == resolve_tracking_uri()
        else f" --tracking-uri {redact_uri(tracking_uri)}"
    )


def closing_lines(record, rule, usage: dict, failed: int, launch: int, tracking_uri: str) -> None:
    """Wall time, utilisation and epochs (this launch's, and the sweep's over its launches), the
    champion by the sweep's rule, and what to type next."""
    finished = sum(t.status == "finished" for t in record.trials.values())
    u = usage
    took = duration(u[names.SWEEP_LAUNCH_WALL])
    if launch:
        took += f" (this launch; {duration(u[names.SWEEP_WALL])} over {launch + 1} launches)"
    say(
        f"done in {took}: {finished} trials finished, {failed} failed; slot utilisation "
        f"{u[names.SWEEP_UTILISATION]:.2f} ({u[names.SWEEP_BUSY]:.0f} busy seconds on "
        f"{int(u[names.SWEEP_SLOTS])} slots); epochs trained {u[names.SWEEP_EPOCHS_RUN]:.0f} of "
        f"the grid's {u[names.SWEEP_GRID_EPOCHS]:.0f} ({u[names.SWEEP_EPOCHS_RATIO]:.2f})"
    )
    if names.SWEEP_TRAIN_SECONDS in u:
        say(f"compute: training {u[names.SWEEP_TRAIN_SECONDS]:.0f} s, cheap attacks "
            f"{u[names.SWEEP_CHEAP_SECONDS]:.0f} s, audit {u[names.SWEEP_AUDIT_SECONDS]:.0f} s "
            f"({u[names.SWEEP_AUDIT_SHARE]:.0%} of the three)")  # fmt: skip
    champion = champion_or_none(record.trials.values(), rule)
    if champion is None:
        say(f"no champion yet by the rule ({rule.describe()}): `{command()} best "
            f"{shlex.quote(record.name)}` says why each trial is out")  # fmt: skip
    else:
        for line in champion_lines(champion, rule.eps):
            say(line)
    me, store, sweep = command(), store_flag(tracking_uri), shlex.quote(record.name)
    say(f"next:  {me} best {sweep}{store}   (why each trial is in or out)")
    say(f"       {me} ui --sweep {sweep}{store}   (browse every run in MLflow)")
    say(f"       {me} export {sweep} --out champion{store}")


def champion_lines(champion, eps: float) -> list[str]:
    """The champion as a reader should take it: its worst case on the report points (which took
    no part in choosing it) with a 95 % interval, the figure it was chosen on, its clean
    accuracy, and which model of it is exported."""
    c, model = champion.configuration, champion.model
    seeds = f"mean of {len(c.trials)} seeds" if len(c.trials) > 1 else "1 seed"
    reported = c.worst_on(eps, names.REPORT)
    if reported is None:  # a run from before the halves: the figure it was chosen on
        figure = f"worst case {shown(c.worst(eps), c.worst_interval(eps))} at eps {eps:g}"
    else:
        figure = (f"worst case {shown(reported, c.worst_interval(eps, names.REPORT))} at eps "
                  f"{eps:g} on the report points (chosen at "
                  f"{c.worst_on(eps, names.SELECTION):.3f} on the selection points)")  # fmt: skip
    lines = [f"champion {c.name} ({seeds}): {figure}, clean {shown(c.clean, c.clean_interval())}"]
    if len(c.trials) > 1:
        own = model.worst_on(eps, names.REPORT)
        own = model.worst(eps) if own is None else own
        lines.append(f"exported seed {model.seed}, the seed nearest the mean (its own worst case "
                     f"{own:.3f})")  # fmt: skip
    return lines
