"""Export a trial's model: copy the artifacts the trial logged under `model/` (an exported
program, a state_dict, its config), add its metrics, and register a model version. The registry
alias `champion` moves only onto the sweep's champion by the rule, or where the caller asks.
No model class is needed: the trial already wrote everything."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tracking.runs import ROLE_TAG
from tracking.select import SelectionError, best_run_id

MODEL_FILES = ("model.pt2", "state_dict.pt", "config.json")
CHAMPION = "champion"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve_run(
    client: MlflowClient, tracking_uri: str, sweep_or_run: str, rule: dict
) -> tuple[str, str, bool]:
    """(run id, sweep name, chosen by the rule) for a trial run id, or for a sweep name via the
    sweep's own selection rule (`rule`: overrides of it, `best_run_id`'s keyword arguments)."""
    if _RUN_ID.match(sweep_or_run):
        try:
            run = client.get_run(sweep_or_run)
        except MlflowException as err:
            raise SelectionError(f"no run with id {sweep_or_run} in this store") from err
        if run.data.tags.get(ROLE_TAG) != "trial":
            raise SelectionError(
                f"run {sweep_or_run} is not a trial run (give a trial's run id or a sweep name)"
            )
        return run.info.run_id, client.get_experiment(run.info.experiment_id).name, False
    return best_run_id(tracking_uri, sweep_or_run, **rule), sweep_or_run, True


def export_model(
    tracking_uri: str, sweep_or_run: str, out: Path, champion: bool = False, **rule
) -> dict:
    """Write model.pt2, state_dict.pt, config.json and metrics.json into `out` (all or nothing)
    and register a version of the sweep's model. The alias `champion` points at it when the run
    was chosen by the rule (a sweep name was given) or `champion` is asked for."""
    client = MlflowClient(tracking_uri)
    run_id, sweep, by_rule = resolve_run(client, tracking_uri, sweep_or_run, rule)
    run = client.get_run(run_id)
    blocked = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise SelectionError(f"--out {out}: {blocked} is a file; give a new or empty folder")
    if out.exists() and any(out.iterdir()):
        raise SelectionError(f"--out {out} is not empty; give a new or empty folder")
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        staged = Path(tmp) / "export"
        try:
            client.download_artifacts(run_id, "model", str(Path(tmp)))
        except (MlflowException, OSError) as err:
            raise SelectionError(f"run {run_id} has no model artifacts (was it finished?)") from err
        shutil.move(str(Path(tmp) / "model"), staged)
        missing = [f for f in MODEL_FILES if not (staged / f).is_file()]
        if missing:
            raise SelectionError(f"run {run_id} lacks {', '.join(missing)} under model/")
        config = json.loads((staged / "config.json").read_text())
        config.update({"run_id": run_id, "run_name": run.info.run_name, "sweep": sweep})
        (staged / "config.json").write_text(json.dumps(config, indent=2))
        (staged / "metrics.json").write_text(json.dumps(run.data.metrics, indent=2, sort_keys=True))
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        shutil.move(str(staged), out)
    alias = by_rule or champion
    version = register(client, sweep, run_id, run.info.artifact_uri + "/model", alias)
    return {
        "run_id": run_id,
        "run_name": run.info.run_name,
        "sweep": sweep,
        "out": str(out),
        "registered_model": sweep,
        "version": version,
        "champion": alias,
    }


def register(client: MlflowClient, name: str, run_id: str, source: str, champion: bool) -> str:
    """A new model version of `name` from `source`; alias `champion` points at it if asked."""
    try:
        client.create_registered_model(name, description="satsweep champions of this sweep")
    except MlflowException as err:
        if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(err):
            raise
    version = client.create_model_version(name, source=source, run_id=run_id)
    if champion:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    return version.version
