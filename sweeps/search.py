"""Random and Optuna search through Ray Tune, seeds averaged, on one or two objectives.

Ray Tune's `OptunaSearch` samples one space and refuses a grid inside it, and its `Repeater`
averages a single metric over repeats it tells apart by a config key. A robustness sweep needs
both the grid's cells (architecture x defence x listed axes, each searched on its own) and the
mean of two objectives over seeds, so `CellSearch` is a small Tune `Searcher` that holds one
`OptunaSearch` per cell and:

- samples the cells in turn, `search.num_samples` configurations each, so every cell gets the
  same budget as in a grid;
- runs each sampled configuration once per `grid.seeds` value, the sampled values unchanged;
- tells the cell's study the mean over the seeds of each objective once every seed has ended
  (a seed without the figure, failed or stopped early, is left out of the mean; a
  configuration none of whose seeds has it is told as failed);
- never forwards intermediate results: Optuna cannot prune a multi-objective study, and early
  stopping is ASHA's, on the early-stopping signal (`sweeps/tuner.py`).

`random` is the same path with Optuna's RandomSampler, so the two searches differ only in how
they draw. Tune saves a searcher with its experiment state; `CellSearch` pickles whole (the
studies, what was asked and what was told), so `--resume` continues where the snapshot left it.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from sweeps.space import SearchSettings, cell_space
from sweeps.spec import SweepSpec, search_cells
from tracking import metric_names as names

# TPE and the GP draw at random until a study has this many finished configurations (Optuna's
# default is 10, more than a cell of a small search ever gets); a third of the cell's budget,
# at least 2
STARTUP_SHARE = 1 / 3


def objective_metrics(spec: SweepSpec) -> list[str]:
    """The reported metrics the searcher maximises: the final cheap-tier worst case at
    selection.eps on the selection half of the evaluation points (the report half stays unseen
    by the search, as by the selection), and clean accuracy."""
    eps = spec.selection.eps
    by_name = {
        "worst_case": names.worst_case_on(eps, names.SELECTION),
        "clean_acc": names.CLEAN_ACC,
    }
    return [by_name[o] for o in spec.search.objectives]


def sampler(search: SearchSettings, seed: int, samples: int):
    """The cell's Optuna sampler. A cell's study runs as many configurations at once as the
    sweep has slots; the GP picks such a batch greedily (its q-batch acquisition)."""
    import optuna

    if search.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = max(2, math.ceil(samples * STARTUP_SHARE))
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


class CellSearch(Searcher):
    """Tune's searcher for a sampled sweep (see the module docstring)."""

    def __init__(self, spec: SweepSpec, every_report_has: str):
        """`every_report_has`: the metric Tune ranks by, in every report (Tune checks that each
        report carries its searcher's metric; the objectives come only with the last one)."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per sampled trial
        self.metrics = objective_metrics(spec)
        super().__init__(metric=every_report_has, mode="max")
        self.cells = search_cells(spec)
        self.samples = [spec.samples_in(cell) for cell in self.cells]
        self.seeds = list(spec.grid.seeds)
        self.studies = [self._study(spec, cell, i) for i, cell in enumerate(self.cells)]
        self.asked = [0] * len(self.cells)
        self.queue: list[tuple[str, dict]] = []  # (configuration, trial config) to hand out
        self.configuration_of: dict[str, str] = {}  # Tune's trial id -> configuration id
        self.cell_of: dict[str, int] = {}  # configuration id -> its grid cell
        self.reported: dict[str, dict[str, list[float] | None]] = {}  # configuration -> trials
        self.told: dict[str, list[float] | None] = {}  # configuration -> the means told

    def _study(self, spec: SweepSpec, cell: dict, index: int) -> OptunaSearch | None:
        space = cell_space(spec.search.space, spec.defences[cell["defence"]])
        if not space:
            return None
        many = len(self.metrics) > 1
        return OptunaSearch(
            space={key: dist.tune_domain() for key, dist in space.items()},
            metric=self.metrics if many else self.metrics[0],
            mode=["max"] * len(self.metrics) if many else "max",
            sampler=sampler(spec.search, spec.search.seed + index, self.samples[index]),
        )

    # ---- Tune's side --------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict | None:
        if not self.queue:
            self._sample_next()
        if not self.queue:
            return Searcher.FINISHED
        configuration, config = self.queue.pop(0)
        self.configuration_of[trial_id] = configuration
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        configuration = self.configuration_of.get(trial_id)
        if configuration is None or configuration in self.told:
            return
        values = None if error or not result else [_number(result.get(m)) for m in self.metrics]
        self.reported[configuration][trial_id] = values
        if len(self.reported[configuration]) == len(self.seeds):
            self._tell(configuration)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))

    # ---- sampling and telling -------------------------------------------------------------

    def _sample_next(self) -> None:
        """Queue the next configuration, one trial per seed: from the cell with the fewest
        configurations so far (the first of them on a tie)."""
        open_cells = [i for i, n in enumerate(self.asked) if n < self.samples[i]]
        if not open_cells:
            return
        i = min(open_cells, key=lambda c: (self.asked[c], c))
        configuration = f"{i}-{self.asked[i]}"
        self.asked[i] += 1
        self.cell_of[configuration] = i
        study = self.studies[i]
        sampled = study.suggest(configuration) if study is not None else {}
        self.reported[configuration] = {}
        point = {**self.cells[i], **sampled}
        self.queue += [(configuration, {**point, "seed": seed}) for seed in self.seeds]

    def _tell(self, configuration: str) -> None:
        """The study learns the mean over the configuration's seeds of each objective."""
        rows = [v for v in self.reported[configuration].values() if v is not None]
        means = [_nanmean([row[k] for row in rows]) for k in range(len(self.metrics))]
        failed = any(math.isnan(m) for m in means)
        self.told[configuration] = None if failed else means
        study = self.studies[self.cell_of[configuration]]
        if study is None:
            return
        result = None if failed else dict(zip(self.metrics, means, strict=True))
        study.on_trial_complete(configuration, result, error=failed)


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")
