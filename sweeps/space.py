"""The spec's `search` section: what is sampled instead of listed, and how.

`search.name: grid` (the default) enumerates `grid`. `random` and `optuna` sample the settings
named in `search.space` for every cell of the grid (the combinations of its listed axes but the
seed), `num_samples` configurations per cell, each run once per `grid.seeds` value
(`sweeps/search.py`). A setting is addressed by its dotted spec name (`lam`,
`training.optimizer.lr`, `defence.beta`) and is either a grid axis or sampled, never both.

What may be sampled is what defines a recipe: lambda, the activation, the training recipe and
the defence's strength. What measures a recipe (dataset, evaluation, audit) is the same for every
trial, or the trials' numbers would not be comparable; the architecture, the defence's kind and
the seed stay grid axes (they choose a cell, or are replicates).
"""

from __future__ import annotations

import difflib
import math
import typing
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from trainables.settings import (
    DefenceSettings,
    Section,
    TrialSettings,
    fix,
    getattr_dotted,
    require,
    with_settings,
)

OBJECTIVES = ("worst_case", "clean_acc")
CONTINUOUS = ("loguniform", "uniform", "randint")  # a twin resets these to the spec's value
KINDS = (*CONTINUOUS, "choice")
# settings that measure or frame a trial rather than define its recipe: (why not, the fix)
NOT_SAMPLED = {
    "dataset": ("the data is what the sweep is about", "run one sweep per dataset"),
    "evaluation": ("every trial must be measured alike, or their numbers do not compare",
                   "set it once in the spec's evaluation section"),
    "audit": ("every trial must be audited alike", "set it once in the spec's audit section"),
    "arch": ("architectures are a grid axis", "list them in grid.architectures"),
    "seed": ("seeds are replicates, not settings", "list them in grid.seeds"),
    "defence.kind": ("the defence's kind is a grid axis", "list defences in grid.defences"),
    "training.epochs": ("trials trained for different budgets do not compare, and ASHA's "
                        "rungs count epochs", "set training.epochs once"),
    "training.eval_batch_size": ("it changes no result", "set it once"),
    "training.checkpoint_every": ("it changes no result", "set it once"),
    "training.checkpoint_min_seconds": ("it changes no result", "set it once"),
    "defence.overfit_size": ("the overfitting watch is a measurement", "set it in grid.defences"),
    "defence.overfit_steps": ("the overfitting watch is a measurement", "set it in grid.defences"),
    "defence.overfit_drop": ("the overfitting watch is a measurement", "set it in grid.defences"),
}  # fmt: skip


class Distribution(Section):
    """One sampled setting: exactly one of `loguniform: [lo, hi]`, `uniform: [lo, hi]`,
    `randint: [lo, hi]` (both ends included) or `choice: [a, b, ...]`."""

    loguniform: list[float] | None = Field(None, min_length=2, max_length=2)
    uniform: list[float] | None = Field(None, min_length=2, max_length=2)
    randint: list[int] | None = Field(None, min_length=2, max_length=2)
    choice: list[bool | int | float | str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        given = [k for k in KINDS if getattr(self, k) is not None]
        named = ", ".join(given) or "none"
        require(len(given) == 1, "", f"gives {len(given)} distributions ({named})",
                "give exactly one of loguniform, uniform, randint or choice, e.g. "
                "{loguniform: [0.01, 100]}")  # fmt: skip
        if self.kind != "choice":
            lo, hi = self.bounds
            require(lo < hi, self.kind, f"needs low < high (got [{lo}, {hi}])",
                    "write [low, high], e.g. [0.01, 100]")  # fmt: skip
        if self.kind == "loguniform":
            require(self.bounds[0] > 0, "loguniform", "needs a low end above 0 (a log scale)",
                    "use e.g. [0.01, 100], or uniform for a range from 0")  # fmt: skip
        if self.kind == "choice":
            values = self.choice
            require(len(set(map(repr, values))) == len(values), "choice",
                    "has repeated values", "list each value once")  # fmt: skip
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def bounds(self) -> list:
        return getattr(self, self.kind)

    def describe(self) -> str:
        if self.kind == "choice":
            return f"one of {self.choice}"
        lo, hi = self.bounds
        return f"{self.kind} [{lo:g}, {hi:g}]"

    def tune_domain(self):
        """The distribution as Ray Tune's search space entry (randint's high end included)."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(self.choice)
        lo, hi = self.bounds
        if self.kind == "randint":
            return tune.randint(lo, hi + 1)  # Tune's upper end is exclusive
        return tune.loguniform(lo, hi) if self.kind == "loguniform" else tune.uniform(lo, hi)


class SearchSettings(Section):
    """How a sweep chooses its trials: `grid` lists them; `random` and `optuna` (on one or two
    objectives) sample `space` for every grid cell, `num_samples` configurations per cell,
    each over every seed of `grid.seeds`, the searcher told the mean over the seeds. An optuna
    search draws with `sampler`: `tpe` (Optuna's TPESampler) or `gp` (its GPSampler, Gaussian
    process Bayesian optimisation, which Optuna recommends for budgets of 10 to 100 trials)."""

    name: Literal["grid", "random", "optuna"] = "grid"
    sampler: Literal["tpe", "gp"] | None = None  # optuna only; tpe when not given
    num_samples: int = Field(8, ge=1, le=100_000, **fix("use e.g. 8 configurations per cell"))
    seed: int = Field(0, ge=0, le=2**31 - 1, **fix("use a seed >= 0"))
    # what the searcher maximises: the final cheap-tier worst case at selection.eps and/or clean
    # accuracy; two objectives search their Pareto front
    objectives: list[Literal[OBJECTIVES]] = Field(["worst_case"], min_length=1, max_length=2)  # type: ignore[valid-type]
    space: dict[str, Distribution] = {}

    @model_validator(mode="before")
    @classmethod
    def _optuna_draws_by_tpe_unless_told(cls, data: Any) -> Any:
        """Filled in here, not left None, so the sweep's params say which sampler drew."""
        if isinstance(data, dict) and data.get("name") == "optuna" and "sampler" not in data:
            return {**data, "sampler": "tpe"}
        return data

    @model_validator(mode="after")
    def _space_fits_the_name(self) -> SearchSettings:
        require(len(set(self.objectives)) == len(self.objectives), "objectives",
                "has repeated values", "list each once")  # fmt: skip
        if self.name == "grid":
            require(
                not self.space,
                "space",
                "is set while search.name is grid (a grid samples nothing)",
                "set search.name: random or optuna, or drop it",
            )
        else:
            require(bool(self.space), "space", f"is empty, so search.name {self.name} has "
                    "nothing to sample", "add e.g. `lam: {loguniform: [0.01, 100]}`, or use "
                    "search.name: grid")  # fmt: skip
        require(self.sampler is None or self.name == "optuna", "sampler",
                f"is set while search.name is {self.name}, which has no sampler to choose",
                "set search.name: optuna, or drop it")  # fmt: skip
        return self

    @property
    def sampled(self) -> bool:
        return self.name != "grid"

    def continuous(self) -> set[str]:
        """The settings sampled from a range: a transfer twin keeps the spec's value of these."""
        return {key for key, d in self.space.items() if d.kind in CONTINUOUS}


def sampleable_names() -> list[str]:
    """Every dotted setting a space may name."""
    names = ["lam", "activation"]
    names += [f"training.{n}" for n in _leaves(TrialSettings.model_fields["training"].annotation)]
    names += [f"defence.{n}" for n in _leaves(DefenceSettings)]
    return [n for n in names if n not in NOT_SAMPLED]


def _leaves(model: type[BaseModel]) -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        inner = field.annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            out += [f"{name}.{leaf}" for leaf in _leaves(inner)]
        else:
            out.append(name)
    return out


def check_space(space: dict[str, Distribution], bases: list[TrialSettings], listed: set) -> None:
    """Each sampled name is a setting that may be sampled, not also a listed grid axis, used by
    some defence of the grid, and each end (or choice) is a value the setting accepts under every
    defence that uses it: refused as FieldProblems under `search.space`. `bases`: the spec's
    settings under each of the grid's defences."""
    known = sampleable_names()
    for key, dist in space.items():
        where = f"search.space.{key}"
        _check_name(key, where, known)
        axis = {"lam": "grid.lambdas", "activation": "grid.activations"}.get(key)
        require(axis not in listed, where, f"is sampled and also listed in {axis}",
                f"keep one: drop {axis} or drop search.space.{key}")  # fmt: skip
        using = [b for b in bases if not unused_by(b.defence, key)]
        require(bool(using), where, "is read by none of grid.defences' kinds",
                "add a defence that uses it to grid.defences, or drop it")  # fmt: skip
        _check_type(key, dist, using[0], where)
        for base in using:
            for value in dist.bounds:  # both ends, or every choice
                _check_value(key, value, base, where, dist.kind == "choice")


def _check_name(key: str, where: str, known: list[str]) -> None:
    for prefix, (why, fix_) in NOT_SAMPLED.items():
        if key == prefix or key.startswith(prefix + "."):
            require(False, where, f"cannot be sampled: {why}", fix_)
    if key not in known:
        near = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean `{near[0]}`?" if near else f"sampleable: {', '.join(known)}"
        require(False, where, "is not a setting", f"name a trial setting by its dotted name "
                f"({hint})")  # fmt: skip


def _check_type(key: str, dist: Distribution, base: TrialSettings, where: str) -> None:
    kind = _value_kind(base, key)
    if kind == "whole" and dist.kind in ("loguniform", "uniform"):
        require(False, where, f"is a whole number, and {dist.kind} draws fractions",
                f"use randint: {[math.ceil(dist.bounds[0]), math.floor(dist.bounds[1])]} or "
                "choice")  # fmt: skip
    if kind == "word" and dist.kind != "choice":
        require(False, where, f"takes one of a few values, not a {dist.kind} range",
                "use choice: [...]")  # fmt: skip


def _value_kind(base: TrialSettings, key: str) -> str:
    """`whole`, `word` (text or true/false) or `number`, from the field's declaration."""
    head, _, leaf = key.rpartition(".")
    holder = getattr_dotted(base, head) if head else base
    annotation = type(holder).model_fields[leaf].annotation
    kinds = set(typing.get_args(annotation)) or {annotation}
    if kinds & {int} and float not in kinds:
        return "whole"
    return "number" if float in kinds or int in kinds else "word"


def _check_value(key: str, value: Any, base: TrialSettings, where: str, chosen: bool) -> None:
    try:
        with_settings(base, {key: value})
    except ValidationError as err:
        error = err.errors()[0]
        problem = error["msg"].lower().removeprefix("value error, ")
        verb, fix_ = (("includes", "list only values it accepts") if chosen else
                      ("reaches", "keep the range within what the setting accepts"))  # fmt: skip
        require(False, where, f"{verb} {value!r}, which {key} does not accept ({problem})", fix_)


def unused_by(defence: DefenceSettings, key: str) -> bool:
    """Does a defence of this kind ignore `key`? (Then its cell does not sample it: sampling
    it there would run one recipe twice under two names.)"""
    return key.startswith("defence.") and not defence.reads(key.removeprefix("defence."))


def cell_space(space: dict[str, Distribution], defence: DefenceSettings) -> dict[str, Distribution]:
    """The part of the space a cell with this defence samples."""
    return {key: dist for key, dist in space.items() if not unused_by(defence, key)}
