"""The sweep spec: one typed, validated config, and the single home of every default.

A YAML file is checked field by field before Ray starts: unknown keys, wrong types and
impossible values raise SpecError naming the file, the field and the fix.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml

from trainables.attacks import AUDIT_ATTACKS, CHEAP_ATTACKS
from trainables.data import DATASETS
from trainables.models import ACTIVATIONS, ARCH_KINDS, ArchConfig
from trainables.penalty import REDUCTIONS, SCHEDULES
from trainables.train import OPTIMIZERS

SCHEDULERS = ("fifo", "asha")


class SpecError(ValueError):
    """A problem with a sweep spec, phrased for the person who wrote it."""

    def __init__(self, where: str, problem: str, fix: str):
        self.where, self.problem, self.fix = where, problem, fix
        super().__init__(f"{where}: {problem}. Fix: {fix}")


@dataclass
class DatasetSpec:
    name: str = "digits"
    data_dir: str | None = None  # relative paths resolve against the working directory
    download: bool = False


@dataclass
class ArchitectureSpec:
    kind: str
    hidden: list[int] = field(default_factory=list)
    channels: list[int] = field(default_factory=list)

    def to_arch(self) -> ArchConfig:
        return ArchConfig(self.kind, tuple(self.hidden), tuple(self.channels))


@dataclass
class GridSpec:
    architectures: list[ArchitectureSpec]
    activations: list[str]
    lambdas: list[float]
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class OptimizerSpec:
    name: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass
class PenaltySpec:
    reduction: str = "mean"
    schedule: str = "linear"
    warmup_epochs: int = 5


@dataclass
class TrainingSpec:
    epochs: int = 20
    batch_size: int = 64
    eval_batch_size: int = 1000
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    penalty: PenaltySpec = field(default_factory=PenaltySpec)
    saturation_threshold: float = 5.0  # |h| beyond which a sigmoid/tanh unit counts as saturated
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch is always saved)


@dataclass
class MaskingSpec:
    """Thresholds of the gradient-masking flags (trainables/masking.py)."""

    zero_grad_threshold: float = 0.05  # fraction of points with an exactly-zero input gradient
    gap_threshold: float = 0.10  # naive minus stabilised attack accuracy
    tolerance: float = 0.02  # slack for "beats" and "non-monotone" comparisons
    unbounded_threshold: float = 0.05  # PGD-CE accuracy allowed at the unbounded eps


@dataclass
class EvaluationSpec:
    size: int = 1000  # fixed, seeded subset of the test split (capped at its size)
    seed: int = 0
    eps: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.3])
    unbounded_eps: float = 1.0
    attacks: list[str] = field(default_factory=lambda: list(CHEAP_ATTACKS))
    pgd_steps: int = 40
    pgd_restarts: int = 1
    pgd_step_factor: float = 2.5  # step size = factor * eps / steps
    apgd_iterations: int = 100
    noise_draws: int = 100
    bpda_temperature: float = 4.0
    every_epochs: int = 0  # > 0: FGSM and PGD-CE every N epochs as well
    masking: MaskingSpec = field(default_factory=MaskingSpec)


@dataclass
class AuditSpec:
    """Square and AutoAttack `standard` after the grid, on the top-k and every flagged trial."""

    enabled: bool = True
    top_k: int = 2
    rank_eps: float | None = None  # ranks the top k (default: 0.1 if evaluated, else the largest)
    size: int = 1000  # audit set: a superset of the evaluation subset
    eps: list[float] | None = None  # default: evaluation.eps
    attacks: list[str] = field(default_factory=lambda: list(AUDIT_ATTACKS))
    square_queries: int = 5000


@dataclass
class ResourcesSpec:
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent_trials: int = 2


@dataclass
class SchedulerSpec:
    name: str = "fifo"
    grace_period: int = 2  # asha: epochs before a trial may be stopped


@dataclass
class SweepSpec:
    name: str
    grid: GridSpec
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    audit: AuditSpec = field(default_factory=AuditSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    storage_path: str = "ray_results"
    tracking_uri: str | None = None
    max_failures: int = 1  # retries of a crashed trial, each from its last checkpoint

    @property
    def architectures(self) -> dict[str, ArchConfig]:
        return {a.to_arch().name: a.to_arch() for a in self.grid.architectures}

    @property
    def num_trials(self) -> int:
        g = self.grid
        return len(g.architectures) * len(g.activations) * len(g.lambdas) * len(g.seeds)


def load_spec(path: str | Path) -> tuple[SweepSpec, str]:
    """Read, parse and validate a spec file; returns the spec and its text (kept as artifact)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(
            str(path),
            "no such file",
            "give the path of a sweep spec YAML file, e.g. sweeps/quickstart.yaml",
        )
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(str(path), f"not valid YAML ({err})", "fix the YAML syntax") from err
    return parse_spec(raw, source=path.name), text


def parse_spec(raw: object, source: str = "spec") -> SweepSpec:
    """Build and validate a SweepSpec from parsed YAML."""
    try:
        spec = _build(SweepSpec, raw, "")
        _check_values(spec)
    except SpecError as err:
        raise SpecError(
            f"{source}: {err.where}" if err.where else source, err.problem, err.fix
        ) from None
    return spec


# ---- generic building: keys and types ------------------------------------------------------


def _build(cls, raw, where: str):
    if not isinstance(raw, dict):
        raise SpecError(
            where or "top level",
            f"expected a mapping, got {_kind(raw)}",
            f"write {where or 'the spec'} as `key: value` lines",
        )
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean `{near[0]}`?" if near else f"known keys: {', '.join(known)}"
            raise SpecError(
                _join(where, str(key)), "unknown key", f"remove it or rename it ({hint})"
            )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in known.items():
        here = _join(where, name)
        if name in raw:
            values[name] = _convert(hints[name], raw[name], here)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise SpecError(here, "missing required field", f"add `{name}:` to the spec")
    return cls(**values)


def _convert(tp, value, where: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(inner, value, where)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise SpecError(
                where,
                f"expected a list, got {_kind(value)}",
                "write it as [a, b, ...] (a one-item list is fine)",
            )
        return [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if is_dataclass(tp):
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(
                where, f"expected true or false, got {_kind(value)}", "use true or false"
            )
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(
                where, f"expected a whole number, got {_kind(value)}", "write an integer such as 10"
            )
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(
                where,
                f"expected a number, got {_kind(value)}",
                "write a number such as 0.5 (YAML reads 1e-3 as text: write 1.0e-3)",
            )
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(where, f"expected text, got {_kind(value)}", "write a string")
        return value
    raise TypeError(f"spec field type {tp} not supported")  # a bug in this file, not in the spec


def _kind(value) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "nothing (null)"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


# ---- values ----------------------------------------------------------------------------------


def _require(ok: bool, where: str, problem: str, fix: str) -> None:
    if not ok:
        raise SpecError(where, problem, fix)


def _one_of(value: str, allowed, where: str) -> None:
    _require(
        value in allowed, where, f"unknown value {value!r}", f"use one of: {', '.join(allowed)}"
    )


def _check_values(spec: SweepSpec) -> None:
    _require(
        bool(spec.name.strip()) and "/" not in spec.name,
        "name",
        f"{spec.name!r} is not a usable sweep name",
        "use a short name without '/'",
    )
    _check_dataset(spec.dataset)
    _check_grid(spec.grid)
    _check_training(spec.training)
    _check_evaluation(spec.evaluation, spec.audit)
    r = spec.resources
    _require(
        r.cpus_per_trial > 0,
        "resources.cpus_per_trial",
        "must be > 0",
        "give each trial at least a fraction of a CPU, e.g. 1",
    )
    _require(
        r.gpus_per_trial >= 0,
        "resources.gpus_per_trial",
        "must be >= 0",
        "use 0 for CPU-only trials or a fraction such as 0.25 to share a GPU",
    )
    _require(
        r.gpus_per_trial <= 1 or r.gpus_per_trial == int(r.gpus_per_trial),
        "resources.gpus_per_trial",
        "fractions are only allowed below 1",
        "use 0.25, 0.5, 1, 2, ...",
    )
    _require(
        r.max_concurrent_trials >= 1,
        "resources.max_concurrent_trials",
        "must be >= 1",
        "use 1 or more",
    )
    _one_of(spec.scheduler.name, SCHEDULERS, "scheduler.name")
    _require(
        spec.scheduler.grace_period >= 1,
        "scheduler.grace_period",
        "must be >= 1",
        "give trials at least one epoch before ASHA may stop them",
    )
    _require(
        spec.max_failures >= 0, "max_failures", "must be >= 0", "use 0 to never retry, or e.g. 2"
    )
    _require(
        bool(spec.storage_path.strip()),
        "storage_path",
        "is empty",
        "give a folder (or s3:// / gs:// URI) for Ray's results",
    )


def _check_dataset(d: DatasetSpec) -> None:
    _one_of(d.name, DATASETS, "dataset.name")
    _require(
        d.name == "digits" or d.data_dir is not None,
        "dataset.data_dir",
        f"required for dataset {d.name!r}",
        "point it at a torchvision root folder (and set download: true to fetch it there)",
    )


def _check_grid(g: GridSpec) -> None:
    for key in ("architectures", "activations", "lambdas", "seeds"):
        _require(
            len(getattr(g, key)) > 0,
            f"grid.{key}",
            "is empty",
            "list at least one value: an empty axis makes an empty grid",
        )
    names = set()
    for i, a in enumerate(g.architectures):
        where = f"grid.architectures[{i}]"
        _one_of(a.kind, ARCH_KINDS, f"{where}.kind")
        for key in ("hidden", "channels"):
            for j, width in enumerate(getattr(a, key)):
                _require(
                    width > 0,
                    f"{where}.{key}[{j}]",
                    f"must be > 0 (got {width})",
                    "use positive layer widths",
                )
        _require(
            a.kind == "cnn" or not a.channels,
            f"{where}.channels",
            "an mlp has no conv channels",
            "use kind: cnn, or drop channels",
        )
        _require(
            a.kind == "mlp" or bool(a.channels),
            f"{where}.channels",
            "a cnn needs at least one conv layer",
            "add channels: [8, 16], or use kind: mlp",
        )
        _require(
            bool(a.hidden) or bool(a.channels),
            f"{where}.hidden",
            "has no hidden layer, so there is nothing to saturate",
            "add hidden: [64]",
        )
        name = a.to_arch().name
        _require(name not in names, where, f"duplicates architecture {name}", "list it once")
        names.add(name)
    for i, act in enumerate(g.activations):
        _one_of(act, tuple(ACTIVATIONS), f"grid.activations[{i}]")
    for i, lam in enumerate(g.lambdas):
        _require(
            lam >= 0 and lam == lam and lam != float("inf"),
            f"grid.lambdas[{i}]",
            f"must be a finite number >= 0 (got {lam})",
            "use 0 for no penalty or a positive strength",
        )
    for key in ("activations", "lambdas", "seeds"):
        values = getattr(g, key)
        _require(
            len(set(values)) == len(values),
            f"grid.{key}",
            "has repeated values",
            "list each value once",
        )


def _check_training(t: TrainingSpec) -> None:
    _require(
        t.epochs >= 1,
        "training.epochs",
        f"must be >= 1 (got {t.epochs})",
        "train for at least one epoch",
    )
    _require(t.batch_size >= 1, "training.batch_size", "must be >= 1", "use e.g. 64")
    _require(
        t.checkpoint_every >= 1,
        "training.checkpoint_every",
        "must be >= 1",
        "checkpoint every N >= 1 epochs (a resumed trial repeats at most N - 1 epochs)",
    )
    _require(t.eval_batch_size >= 1, "training.eval_batch_size", "must be >= 1", "use e.g. 1000")
    o = t.optimizer
    _one_of(o.name, OPTIMIZERS, "training.optimizer.name")
    _require(o.lr > 0, "training.optimizer.lr", f"must be > 0 (got {o.lr})", "use e.g. 1.0e-3")
    _require(o.momentum >= 0, "training.optimizer.momentum", "must be >= 0", "use e.g. 0.9")
    _require(o.weight_decay >= 0, "training.optimizer.weight_decay", "must be >= 0", "use 0")
    p = t.penalty
    _one_of(p.reduction, REDUCTIONS, "training.penalty.reduction")
    _one_of(p.schedule, SCHEDULES, "training.penalty.schedule")
    _require(
        p.warmup_epochs >= 0,
        "training.penalty.warmup_epochs",
        "must be >= 0",
        "use 0 for no warm-up",
    )
    _require(
        p.schedule != "linear" or p.warmup_epochs <= t.epochs,
        "training.penalty.warmup_epochs",
        f"is longer than training ({p.warmup_epochs} > {t.epochs} epochs)",
        "shorten the warm-up or train longer",
    )
    _require(
        t.saturation_threshold > 0, "training.saturation_threshold", "must be > 0", "use e.g. 5.0"
    )


def _check_eps_list(values: list[float], where: str) -> None:
    _require(len(values) > 0, where, "is empty", "list at least one budget, e.g. [0.1]")
    for i, eps in enumerate(values):
        _require(
            0 < eps <= 1,
            f"{where}[{i}]",
            f"must be in (0, 1] for [0, 1] inputs (got {eps})",
            "use e.g. 0.1 (MNIST) or 0.031 (8/255, CIFAR)",
        )


def _check_evaluation(e: EvaluationSpec, a: AuditSpec) -> None:
    _require(e.size >= 1, "evaluation.size", "must be >= 1", "use e.g. 1000")
    _check_eps_list(e.eps, "evaluation.eps")
    _require(
        0 < e.unbounded_eps <= 1,
        "evaluation.unbounded_eps",
        "must be in (0, 1]",
        "use 1.0: the whole [0, 1] box",
    )
    _require(len(e.attacks) > 0, "evaluation.attacks", "is empty", "list at least pgd_margin")
    for i, name in enumerate(e.attacks):
        _one_of(name, tuple(CHEAP_ATTACKS), f"evaluation.attacks[{i}]")
    for key in ("pgd_steps", "pgd_restarts", "apgd_iterations", "noise_draws"):
        _require(getattr(e, key) >= 1, f"evaluation.{key}", "must be >= 1", "use e.g. 40")
    _require(e.pgd_step_factor > 0, "evaluation.pgd_step_factor", "must be > 0", "use 2.5")
    _require(e.bpda_temperature > 0, "evaluation.bpda_temperature", "must be > 0", "use 4.0")
    _require(e.every_epochs >= 0, "evaluation.every_epochs", "must be >= 0", "use 0 to turn off")
    for key in ("zero_grad_threshold", "gap_threshold", "tolerance", "unbounded_threshold"):
        value = getattr(e.masking, key)
        _require(
            0 <= value <= 1,
            f"evaluation.masking.{key}",
            f"must be in [0, 1] (got {value})",
            "thresholds are fractions of points or differences of accuracies",
        )
    _require(a.top_k >= 0, "audit.top_k", "must be >= 0", "use 0 to audit flagged trials only")
    _require(
        a.size >= e.size,
        "audit.size",
        f"is smaller than evaluation.size ({e.size})",
        "the audit set must contain the evaluation subset: make it at least as large",
    )
    _require(a.square_queries >= 1, "audit.square_queries", "must be >= 1", "use e.g. 5000")
    if a.eps is not None:
        _check_eps_list(a.eps, "audit.eps")
    if a.rank_eps is not None:
        _require(
            a.rank_eps in e.eps,
            "audit.rank_eps",
            f"{a.rank_eps} is not in evaluation.eps",
            "pick one of the evaluation budgets",
        )
    for i, name in enumerate(a.attacks):
        _one_of(name, tuple(AUDIT_ATTACKS), f"audit.attacks[{i}]")
