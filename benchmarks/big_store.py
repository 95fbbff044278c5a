"""`satsweep best` on a sweep of 2,500 trial runs, the best one past the first 1,000 (MLflow
answers a page of at most 1,000 runs per request). Timed end to end, as a user types it, against
the floor: paging the same trial runs out of the store with a bare MlflowClient in-process.
`build` is also the store the selection test reads."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from benchmarks.common import result, satsweep_seconds
from tracking import metric_names as names
from tracking.per_example import PER_EXAMPLE_ARTIFACT
from trainables.settings import EvaluationSettings, flatten

# what every real trial logs about the thresholds that judged it
JUDGED_BY = {f"evaluation.{k}": v for k, v in flatten(EvaluationSettings().model_dump()).items()
             if k.startswith(("masking.", "unbounded_eps"))}  # fmt: skip

SWEEP = "big"


def build(
    folder: Path, trials: int = 2500, seeds: int = 1, per_example_points: int = 0
) -> tuple[str, str]:
    """A sweep store of `trials` finished trial runs; (tracking URI, run id of the best). The
    best is the oldest run, which MLflow returns last (newest first). `seeds` runs share each
    λ (a configuration of `seeds` seeds); with `per_example_points`, each run carries the
    per-example record a real trial writes (the report's paired comparisons read it)."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(SWEEP, artifact_location=(folder / "art").as_uri())
    parent = client.create_run(exp, tags={"satsweep.role": "sweep"}).info.run_id
    rng = np.random.default_rng(0)
    best = None
    for i in range(trials):
        run = client.create_run(exp, run_name=f"t{i}")
        tags = {"satsweep.role": "trial", "mlflow.parentRunId": parent,
                "satsweep.status": "finished", "masking.masking_suspected": "false"}  # fmt: skip
        worst = 0.9 if i < seeds else 0.1 + (i % 100) / 1000
        params = {"lam": str(i // seeds), "seed": str(i % seeds), **JUDGED_BY}
        client.log_batch(
            run.info.run_id,
            metrics=[
                Metric("clean_acc", 0.95, 0, 1),
                Metric("worst_case_acc/eps_0.1", worst, 0, 1),
                *(
                    [Metric(names.EVAL_POINTS, per_example_points, 0, 1)]
                    if per_example_points
                    else []
                ),
            ],
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        if per_example_points:
            client.log_dict(run.info.run_id, per_example(rng, per_example_points, worst),
                            PER_EXAMPLE_ARTIFACT)  # fmt: skip
        client.set_terminated(run.info.run_id)
        best = best or run.info.run_id
    return uri, best


def per_example(rng: np.random.Generator, points: int, worst: float) -> dict:
    """A per-example record (`tracking.per_example`) whose worst case at 0.1 is about `worst`."""
    robust = (rng.random(points) < worst).tolist()
    return {"eval_indices": list(range(points)), "clean": [True] * points,
            "results": [{"attack": "pgd_ce", "eps": 0.1, "robust": robust}]}  # fmt: skip


def run() -> list[dict]:
    from tracking.runs import trial_runs
    from tracking.sweep_run import latest_sweep_run

    with tempfile.TemporaryDirectory() as tmp:
        uri, _ = build(Path(tmp))
        start = time.perf_counter()
        client = MlflowClient(uri)
        experiment_id, parent = latest_sweep_run(client, SWEEP)
        trial_runs(client, experiment_id, parent.info.run_id)
        floor = time.perf_counter() - start
        best = satsweep_seconds("best", SWEEP, "--tracking-uri", uri)
    return [result("satsweep best on 2,500 trial runs vs paging them with a bare MlflowClient",
                   best, "seconds (lower is better)", floor)]  # fmt: skip
