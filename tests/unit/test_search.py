"""Search specs and the searcher: what may be sampled and how a bad space is refused; the
searcher's cells, seeds, means told and saved state; a sampled trial's settings, name and twin."""

import copy
import math

import pytest

from sweeps.search import CellSearch, objective_metrics
from sweeps.spec import SpecError, load_spec, parse_spec, search_cells
from tests.conftest import REPO
from trainables.trainable import SweepContext

SEARCH = {
    "name": "s",
    "grid": {
        "architectures": [{"kind": "mlp", "hidden": [16]}],
        "activations": ["relu"],
        "defences": [
            {"kind": "pgd", "eps": 0.1, "steps": 5},
            {"kind": "trades", "eps": 0.1, "steps": 5},
        ],  # fmt: skip
        "seeds": [0, 1, 2],
    },
    "search": {
        "name": "optuna",
        "num_samples": 4,
        "objectives": ["worst_case", "clean_acc"],
        "space": {
            "lam": {"loguniform": [0.01, 100.0]},
            "training.optimizer.lr": {"loguniform": [1.0e-4, 1.0e-2]},
            "defence.beta": {"uniform": [0.5, 6.0]},
        },
    },
    "training": {"epochs": 2, "penalty": {"warmup_epochs": 1}},
    "evaluation": {"eps": [0.1]},
}


def spec_with(**search):
    """SEARCH with its search section changed; a space given keeps lam sampled unless it says
    otherwise (the grid lists no lambdas)."""
    raw = copy.deepcopy(SEARCH)
    if "space" in search:
        search["space"] = {"lam": {"loguniform": [0.01, 100.0]}, **search["space"]}
    raw["search"].update(search)
    return raw


def refusal(raw) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    return caught.value


def test_a_search_counts_cells_times_samples_times_seeds():
    spec = parse_spec(SEARCH)
    assert len(search_cells(spec)) == 2  # two defences, lam sampled, one activation
    assert spec.num_trials == 2 * 4 * 3


BAD_SPACES = [
    # (space, the field named, a word of the problem)
    ({"lam": {"loguniform": [0.0, 1.0]}}, "search.space.lam.loguniform", "above 0"),
    ({"lam": {"uniform": [2.0, 1.0]}}, "search.space.lam.uniform", "low < high"),
    ({"lam": {"uniform": [-1.0, 1.0]}}, "search.space.lam", "does not accept"),
    ({"lam": {"uniform": [0.0, 1.0], "choice": [1.0]}}, "search.space.lam", "2 distributions"),
    ({"training.optimizer.lrr": {"uniform": [0.1, 0.2]}}, "search.space.training.optimizer.lrr",
     "training.optimizer.lr"),
    ({"evaluation.size": {"randint": [10, 20]}}, "search.space.evaluation.size", "measured"),
    ({"seed": {"randint": [0, 3]}}, "search.space.seed", "grid.seeds"),
    ({"defence.kind": {"choice": ["pgd"]}}, "search.space.defence.kind", "grid.defences"),
    ({"training.batch_size": {"uniform": [16.0, 64.0]}}, "search.space.training.batch_size",
     "randint"),
    ({"training.optimizer.name": {"uniform": [0.0, 1.0]}},
     "search.space.training.optimizer.name", "choice"),
    ({"training.optimizer.name": {"choice": ["adam", "rmsprop"]}},
     "search.space.training.optimizer.name", "rmsprop"),
    ({"defence.eps": {"uniform": [0.1, 2.0]}}, "search.space.defence.eps", "does not accept"),
]  # fmt: skip


@pytest.mark.faults
@pytest.mark.parametrize("space, field, word", BAD_SPACES, ids=[b[1] for b in BAD_SPACES])
def test_a_bad_space_is_refused_naming_the_setting(space, field, word):
    err = refusal(spec_with(space=space))
    assert err.where.endswith(field), err
    assert word in str(err), err


@pytest.mark.faults
def test_a_setting_is_a_grid_axis_or_sampled_not_both():
    raw = spec_with()
    raw["grid"]["lambdas"] = [0.0, 1.0]
    err = refusal(raw)
    assert "search.space.lam" in err.where and "grid.lambdas" in str(err)


@pytest.mark.faults
def test_an_axis_neither_listed_nor_sampled_is_missing():
    raw = copy.deepcopy(SEARCH)
    del raw["search"]["space"]["lam"]
    err = refusal(raw)
    assert err.where.endswith("grid.lambdas") and "search.space.lam" in err.fix


@pytest.mark.faults
def test_a_grid_search_samples_nothing_and_a_sampled_one_needs_a_space():
    assert "space" in refusal(spec_with(name="grid")).where
    raw = copy.deepcopy(SEARCH)
    raw["grid"]["lambdas"] = [0.0]
    raw["search"]["space"] = {}
    assert "space" in refusal(raw).where


@pytest.mark.faults
def test_a_sampler_belongs_to_an_optuna_search_only():
    err = refusal(spec_with(name="random", sampler="gp"))
    assert err.where.endswith("search.sampler") and "search.name: optuna" in err.fix
    assert "search.sampler" in refusal(spec_with(sampler="bayes")).where
    assert parse_spec(SEARCH).search.sampler == "tpe"  # what an optuna search draws by


@pytest.mark.faults
def test_a_defence_setting_no_defence_reads_is_refused():
    raw = spec_with(space={"lam": {"uniform": [0.0, 1.0]}, "defence.beta": {"uniform": [1.0, 2.0]}})
    raw["grid"]["defences"] = [{"kind": "pgd", "eps": 0.1, "steps": 5}]
    assert "defence.beta" in refusal(raw).where


def test_the_shipped_search_spec_samples_lambda_and_the_rate_over_two_defences_and_seeds():
    spec, _ = load_spec(REPO / "sweeps" / "search_mnist.yaml")
    s = spec.search
    assert s.name == "optuna" and set(s.objectives) == {"worst_case", "clean_acc"}
    assert {"lam", "training.optimizer.lr"} <= set(s.space)
    assert {d.kind for d in spec.grid.defences} == {"pgd", "trades"}
    assert len(spec.grid.seeds) >= 2


def context_for(spec) -> SweepContext:
    from sweeps.launch import sweep_context

    return sweep_context(spec, "sqlite:///unused.db", "0", "parent")


def drain(searcher: CellSearch) -> list[tuple[str, dict]]:
    out = []
    while (config := searcher.suggest(f"t{len(out)}")) is not CellSearch.FINISHED:
        out.append((f"t{len(out)}", config))
    return out


def test_each_sampled_configuration_runs_once_per_seed_with_the_same_values():
    spec = parse_spec(SEARCH)
    trials = drain(CellSearch(spec, "clean_acc"))
    assert len(trials) == spec.num_trials
    by_values = {}
    for _, config in trials:
        values = tuple(sorted((k, v) for k, v in config.items() if k != "seed"))
        by_values.setdefault(values, []).append(config["seed"])
    assert len(by_values) == 2 * 4
    assert all(sorted(seeds) == [0, 1, 2] for seeds in by_values.values())
    pgd = [c for _, c in trials if c["defence"].startswith("pgd")]
    assert pgd and all("defence.beta" not in c for c in pgd)  # PGD does not read beta


def test_the_study_is_told_the_mean_over_seeds_and_a_configuration_without_figures_fails():
    spec = parse_spec(spec_with(num_samples=2))
    searcher = CellSearch(spec, "clean_acc")
    trials = drain(searcher)
    robust, clean = objective_metrics(spec)
    first = trials[0][1]
    same = [tid for tid, c in trials if {**c, "seed": 0} == {**first, "seed": 0}]
    for value, tid in zip([0.2, 0.4, float("nan")], same, strict=True):  # a seed without figure
        searcher.on_trial_complete(tid, {robust: value, clean: 0.9})
    (configuration,) = searcher.told
    assert searcher.told[configuration] == pytest.approx([0.3, 0.9])
    study = searcher.studies[int(configuration.split("-")[0])]._ot_study
    assert study.trials[0].values == pytest.approx([0.3, 0.9])
    other = [tid for tid, c in trials if c["defence"] == first["defence"] and tid not in same][:3]
    for tid in other:
        searcher.on_trial_complete(tid, error=True)
    assert study.trials[1].state.name == "FAIL"


def test_the_searcher_pickles_whole_and_goes_on_where_it_stopped(tmp_path):
    spec = parse_spec(SEARCH)
    searcher = CellSearch(spec, "clean_acc")
    handed = [searcher.suggest(f"t{i}") for i in range(5)]
    searcher.save(str(tmp_path / "state.pkl"))
    rest = [searcher.suggest(f"t{i}") for i in range(5, spec.num_trials)]
    again = CellSearch(spec, "clean_acc")
    again.restore(str(tmp_path / "state.pkl"))
    assert [again.suggest(f"t{i}") for i in range(5, spec.num_trials)] == rest
    assert again.suggest("extra") is CellSearch.FINISHED
    assert handed[0] != handed[3]  # seeds 0-2 of one configuration, then the next one


def test_a_sampled_trial_carries_its_values_in_settings_and_name_and_its_twin_does_not():
    spec = parse_spec(SEARCH)
    context = context_for(spec)
    (_, config), *_ = [t for t in drain(CellSearch(spec, "clean_acc"))
                       if t[1]["defence"].startswith("trades")]  # fmt: skip
    cfg = context.trial(config)
    assert cfg.training.optimizer.lr == config["training.optimizer.lr"]
    assert cfg.defence.beta == config["defence.beta"] and cfg.lam == config["lam"]
    assert f"lr{config['training.optimizer.lr']:.4g}" in cfg.run_name
    assert cfg.params()["training.optimizer.lr"] == str(config["training.optimizer.lr"])
    twin = context.twin(config)
    base = spec.base_trial(defence=spec.defences[config["defence"]])
    assert twin.lam == 0 and twin.training.optimizer.lr == base.training.optimizer.lr
    assert twin.defence.beta == base.defence.beta and twin.seed == cfg.seed
    assert "lr" not in twin.run_name.split("_seed")[1] and twin.run_name != cfg.run_name


def test_chosen_settings_stay_in_the_twin_and_ranged_ones_go_back():
    raw = spec_with(space={"lam": {"loguniform": [0.1, 1.0]},
                           "training.optimizer.lr": {"loguniform": [1e-4, 1e-2]},
                           "training.optimizer.name": {"choice": ["adam", "sgd"]}})  # fmt: skip
    spec = parse_spec(raw)
    context = context_for(spec)
    cell = {"arch": "mlp-16", "activation": "relu", "defence": "pgd-e0.1-k5-a0.05", "seed": 0}
    one = {**cell, "lam": 0.5, "training.optimizer.lr": 4e-3, "training.optimizer.name": "sgd"}
    other = {**one, "lam": 0.2, "training.optimizer.lr": 2e-4}
    twin = context.twin(one)
    assert twin.training.optimizer.name == "sgd" and twin.lam == 0
    assert math.isclose(twin.training.optimizer.lr, spec.training.optimizer.lr)
    assert not math.isclose(context.trial(one).training.optimizer.lr, twin.training.optimizer.lr)
    # two configurations differing only in ranged settings share one twin
    assert context.twin(other).run_name == twin.run_name
    assert context.twin({**one, "training.optimizer.name": "adam"}).run_name != twin.run_name


def gp_searcher_told(spec, objective) -> CellSearch:
    """A GP search through its random start, each configuration told `objective(lam)`."""
    searcher = CellSearch(spec, "clean_acc")
    (robust,) = objective_metrics(spec)
    for i in range(3):  # the random start: a third of 9 samples
        config = searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {robust: objective(config["lam"])})
    return searcher


def test_a_gaussian_process_search_proposes_from_what_it_was_told_and_pickles_whole(tmp_path):
    """Past its random start the GP's proposals depend on the figures told (the same figures,
    the same proposal; others, another), and a searcher saved after the fit goes on exactly as
    the original."""
    raw = spec_with(sampler="gp", num_samples=9, objectives=["worst_case"])
    raw["grid"]["defences"], raw["grid"]["seeds"] = [raw["grid"]["defences"][0]], [0]
    del raw["search"]["space"]["defence.beta"]
    spec = parse_spec(raw)

    def near_one(lam):
        return 1.0 - abs(math.log10(lam)) / 2

    def large(lam):
        return math.log10(lam) / 4 + 0.5

    first = gp_searcher_told(spec, near_one)
    assert type(first.studies[0]._ot_study.sampler).__name__ == "GPSampler"
    first.save(str(tmp_path / "state.pkl"))
    proposal = first.suggest("t3")
    assert gp_searcher_told(spec, near_one).suggest("t3") == proposal
    assert gp_searcher_told(spec, large).suggest("t3") != proposal
    again = CellSearch(spec, "clean_acc")
    again.restore(str(tmp_path / "state.pkl"))
    assert again.suggest("t3") == proposal
