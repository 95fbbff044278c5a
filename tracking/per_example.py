"""A trial's per-example results, `robustness/per_example.json`: for every evaluation point, each
attack's result (robust or not), its clean correctness, and its purpose (a selection point or a
report point). The trial writes it after its cheap tier; an audit rewrites it with its own
attacks joined in. Comparisons pair two trials on it point by point."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

PER_EXAMPLE_ARTIFACT = "robustness/per_example.json"


@dataclass(frozen=True)
class PerExample:
    eval_indices: np.ndarray  # positions in the test split
    clean: np.ndarray | None  # bool per point (None in runs from before it was stored)
    robust: dict[tuple[str, float], np.ndarray]  # (attack, eps) -> bool per point

    @classmethod
    def from_json(cls, record: dict) -> PerExample:
        robust = {(r["attack"], float(r["eps"])): np.asarray(r["robust"], dtype=bool)
                  for r in record["results"]}  # fmt: skip
        clean = record.get("clean")
        return cls(np.asarray(record["eval_indices"]),
                   None if clean is None else np.asarray(clean, dtype=bool), robust)  # fmt: skip

    def worst(self, eps: float) -> np.ndarray:
        """Per point: robust only if it survives every attack run at eps."""
        masks = [m for (_, e), m in self.robust.items() if e == eps]
        if not masks:
            raise KeyError(f"no attack was run at eps={eps:g}")
        return np.logical_and.reduce(masks)


class PerExampleMissing(LookupError):
    """The run has no per-example results: it predates them, or their upload failed."""


def load_per_example(client: MlflowClient, run_id: str, artifact_uri: str) -> PerExample:
    """The run's per-example record, read straight from the run's `artifact_uri` (from a
    search already made): MLflow's run-id path asks the store for the run twice more per file,
    which made these downloads half of a 1,000-trial report."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as folder:
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{artifact_uri}/{PER_EXAMPLE_ARTIFACT}", dst_path=folder,
                tracking_uri=client.tracking_uri,
            )  # fmt: skip
        except (MlflowException, OSError) as err:
            raise PerExampleMissing(f"run {run_id} has no {PER_EXAMPLE_ARTIFACT}") from err
        return PerExample.from_json(json.loads(Path(path).read_text()))
