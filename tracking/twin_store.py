"""Where a sweep's lambda = 0 twins are found and shared: its trial runs in MLflow.

The twin logic (`trainables/twins.py`) asks for files and states, never for MLflow: this class
answers with the sweep's runs. A twin's weights are either the final model its own grid trial
logged (`model/state_dict.pt`, once the tag `satsweep.final_weights` says they are written), or
a copy another trial trained for the sweep (`transfer_source/state_dict.pt`, tag
`satsweep.twin_trained`); a trial training one says so with `satsweep.training_twin`.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from tracking.runs import MODEL_WEIGHTS, TWIN_CLAIM_TAG, TWIN_TAG, TWIN_WEIGHTS, WEIGHTS_TAG


class MlflowTwinStore:
    """The twin store of one trial (`run_id`) of one launch of a sweep."""

    def __init__(self, client: MlflowClient, experiment_id: str, parent_run_id: str, run_id: str):
        self.client, self.experiment_id = client, experiment_id
        self.parent_run_id, self.run_id = parent_run_id, run_id

    def _first(self, where: str):
        under = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}' and {where}"
        runs = self.client.search_runs([self.experiment_id], filter_string=under, max_results=1)
        return runs[0] if runs else None

    def weights_file(self, twin_name: str, folder: str) -> str | None:
        """The trained twin's state_dict, downloaded into `folder`; None while there is none."""
        places = (
            (f"tags.`{MLFLOW_RUN_NAME}` = '{twin_name}' and tags.`{WEIGHTS_TAG}` = 'true'",
             MODEL_WEIGHTS),
            (f"tags.`{TWIN_TAG}` = '{twin_name}'", TWIN_WEIGHTS),
        )  # fmt: skip
        for where, path in places:
            run = self._first(where)
            if run is not None:
                return self.client.download_artifacts(run.info.run_id, path, folder)
        return None

    def in_training(self, twin_name: str) -> bool:
        """Its own trial runs, or another trial is training it for the sweep (MLflow's search
        has no OR: two queries)."""
        for tag in (MLFLOW_RUN_NAME, TWIN_CLAIM_TAG):
            if self._first(f"attributes.status = 'RUNNING' and tags.`{tag}` = '{twin_name}'"):
                return True
        return False

    def claim(self, twin_name: str) -> None:
        self.client.set_tag(self.run_id, TWIN_CLAIM_TAG, twin_name)

    def release(self, twin_name: str) -> None:
        self.client.delete_tag(self.run_id, TWIN_CLAIM_TAG)

    def publish(self, twin_name: str, weights_file: str) -> None:
        """The weights on this trial's run, then the tag that lets other trials find them (in
        that order: a tag never points at weights not yet written)."""
        self.client.log_artifact(self.run_id, weights_file, str(Path(TWIN_WEIGHTS).parent))
        self.client.set_tag(self.run_id, TWIN_TAG, twin_name)
