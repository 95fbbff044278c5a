"""ASHA whose rungs survive `--resume`.

Tune restores a sweep's trials, their checkpoints and its searcher, but its scheduler comes back
as it was pickled when the sweep began: with empty rungs. A resumed ASHA sweep would then judge
each trial only against the results reported after the resume, so the first trials to reach a
rung pass it unopposed and the sweep stops fewer trials than the same grid run in one go.

`ResumableASHA` writes ASHA's own state (`AsyncHyperBandScheduler.save`: its brackets, their
rungs' recorded values and the trials in them) beside the experiment's state, after results at
most every `SAVE_EVERY_S` seconds and after every finished trial; the restored copy reads it back
before its first decision. After a clean interruption nothing is lost; after a crash of the driver,
at most the last `SAVE_EVERY_S` seconds of rung entries are (those trials are judged again when
they report that rung's epoch, which a restored trial does, from its checkpoint). A sweep
interrupted before its first saved result simply starts with empty rungs, as at its launch.
"""

from __future__ import annotations

import os
import tempfile
import time

import pyarrow.fs
from ray.tune.schedulers import ASHAScheduler

STATE_FILE = "asha_rungs.pkl"  # in the experiment's folder, beside Tune's experiment state
SAVE_EVERY_S = 2.0
_OWN = ("_state_uri", "_saved_at", "_loaded")  # bookkeeping of this class, not ASHA's state


class ResumableASHA(ASHAScheduler):
    def __init__(self, state_uri: str, **asha):
        super().__init__(**asha)
        self._state_uri = state_uri  # a local path or a URI pyarrow opens (s3://, gs://)
        self._saved_at = 0.0
        self._loaded = False

    def __getstate__(self) -> dict:
        """Every unpickled copy (the Tuner's, restored on resume) reads the saved state first."""
        return self.__dict__ | {"_loaded": False}

    def on_trial_add(self, tune_controller, trial):
        self._load_once()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        self._load_once()
        decision = super().on_trial_result(tune_controller, trial, result)
        if time.monotonic() - self._saved_at >= SAVE_EVERY_S:
            self.save_state()
        return decision

    def on_trial_complete(self, tune_controller, trial, result):
        super().on_trial_complete(tune_controller, trial, result)
        self.save_state()

    def save_state(self) -> None:
        """ASHA's state, by ASHA's own `save`, written whole or not at all: to a temporary
        file, then renamed into place (or, on an object store, uploaded as one object)."""
        fs, path = pyarrow.fs.FileSystem.from_uri(self._state_uri)
        local = isinstance(fs, pyarrow.fs.LocalFileSystem)
        folder = os.path.dirname(path) if local else None
        if local:
            os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, delete=False) as f:
            pass
        try:
            self.save(f.name)
            if local:
                os.replace(f.name, path)
            else:
                with open(f.name, "rb") as saved, fs.open_output_stream(path) as out:
                    out.write(saved.read())
        finally:
            if os.path.exists(f.name):
                os.remove(f.name)
        self._saved_at = time.monotonic()

    def _load_once(self) -> None:
        """ASHA's saved state, by ASHA's own `restore`; this copy's bookkeeping stays its own
        (the saved `_saved_at` is another process's clock)."""
        if self._loaded:
            return
        self._loaded = True
        fs, path = pyarrow.fs.FileSystem.from_uri(self._state_uri)
        if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
            return  # a new sweep, or one interrupted before its first saved result
        own = {k: self.__dict__[k] for k in _OWN}
        with tempfile.NamedTemporaryFile() as copy:
            with fs.open_input_stream(path) as saved:
                copy.write(saved.read())
            copy.flush()
            self.restore(copy.name)
        self.__dict__.update(own)


def forget_rungs(state_uri: str) -> None:
    """Remove a saved state: a sweep launched anew (not resumed) under the same folder."""
    fs, path = pyarrow.fs.FileSystem.from_uri(state_uri)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        fs.delete_file(path)
