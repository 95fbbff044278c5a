"""The grid: the spec's axes expanded into trial points, as rows for people and as Tune's param
space. Only the axes go into Tune's config (`trainables.settings.GRID_AXES`); what the trials
share travels once, bound to the trainable."""

from __future__ import annotations

from ray import tune

from sweeps.spec import SweepSpec, search_cells
from trainables.settings import GRID_AXES, name_order, run_name


def grid_points(spec: SweepSpec) -> list[dict]:
    """One dict of the grid axes per trial, in the order Tune runs them (it expands the axes
    in the sorted order of their names, the last one slowest). Lambdas go in ascending, so
    for each seed every lambda = 0 trial starts before the trials that reuse its weights as
    their transfer source (`trainables/twins.py`)."""
    g = spec.grid
    return [
        {"arch": arch, "activation": act, "lam": lam, "defence": defence, "seed": seed}
        for seed in g.seeds
        for lam in sorted(g.lambdas)
        for defence in spec.defences
        for arch in spec.architectures
        for act in g.activations
    ]


def param_space(spec: SweepSpec) -> dict:
    """The grid as Tune sees it: one grid_search per axis, so Tune's tables show what varies."""
    g = spec.grid
    values = {
        "arch": list(spec.architectures),
        "activation": g.activations,
        "lam": sorted(g.lambdas),
        "defence": list(spec.defences),
        "seed": g.seeds,
    }
    assert tuple(values) == GRID_AXES  # the trainable reads exactly these keys
    return {axis: tune.grid_search(v) for axis, v in values.items()}


def naming(spec: SweepSpec) -> tuple[str, ...]:
    """The order of the axes in the sweep's run names: those with more than one value (or
    sampled) first."""
    g, space = spec.grid, spec.search.space
    counts = {"lam": len(g.lambdas or space), "activation": len(g.activations or space),
              "defence": len(spec.defences), "arch": len(spec.architectures)}  # fmt: skip
    return name_order({axis for axis, n in counts.items() if n > 1})


def example_points(spec: SweepSpec) -> list[dict]:
    """Trial configs of the sweep's shape: its grid points, or for a search every cell and seed
    with each sampled setting at a value of as many digits as a sampled one shows (`--dry-run`,
    the width of the progress lines)."""
    if not spec.search.sampled:
        return grid_points(spec)
    drawn = {key: _example(dist) for key, dist in spec.search.space.items()}
    return [
        cell | drawn | {"seed": seed} for cell in search_cells(spec) for seed in spec.grid.seeds
    ]


def _example(dist):
    if dist.kind == "choice":
        return max(dist.choice, key=lambda v: len(str(v)))
    if dist.kind == "randint":
        return dist.bounds[1]
    return dist.bounds[0] * 1.2345  # four significant digits, the names' precision


def trial_name(config: dict, order: tuple[str, ...]) -> str:
    """The run name of a grid point, from its axes."""
    return run_name(config["arch"], config["activation"], config["lam"], config["seed"],
                    config["defence"], order)  # fmt: skip
