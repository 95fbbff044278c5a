"""The sweep spec: the trial sections of `trainables.settings` plus the grid and what only the
driver needs (resources, scheduler, storage, tracking). Loading a YAML file validates it in full
before Ray starts; every problem becomes one `SpecError` naming the file, the field and the fix.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from sweeps.space import SearchSettings, cell_space, check_space
from tracking.rules import Baselines, SelectionRule
from trainables.names import ACTIVATION_NAMES
from trainables.settings import (
    ActivationName,
    ArchitectureSettings,
    DefenceSettings,
    FieldProblem,
    Section,
    SweepSettings,
    TrialSettings,
    fix,
    require,
    run_name,
)

# a sweep's name is its MLflow experiment and registered model, in any language; its folders
# (Ray's experiment state, the launch lock) use `folder_name`, derived from it
FOLDER_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
MAX_NAME = 100
MAX_SPEC_BYTES = 1 << 20
MAX_RUN_NAME = 200  # Ray adds "_<trial id>" to make a folder name; file systems allow 255


class SpecError(ValueError):
    """A problem with a sweep spec, phrased for the person who wrote it."""

    def __init__(self, where: str, problem: str, fix: str):
        self.where, self.problem, self.fix = where, problem, fix
        super().__init__(f"{where}: {problem}. Fix: {fix}")


class GridSpec(Section):
    architectures: list[ArchitectureSettings] = Field(min_length=1)
    # either listed here or sampled (search.space.activation / search.space.lam)
    activations: list[ActivationName] | None = Field(None, min_length=1)
    lambdas: list[typing.Annotated[float, Field(ge=0, **fix("use 0 for no penalty"))]] | None = (
        Field(None, min_length=1)
    )
    seeds: list[typing.Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field([0], min_length=1)
    # training-time defences, crossed with the other axes (`none`: plain training)
    defences: list[DefenceSettings] = Field([DefenceSettings()], min_length=1)

    @model_validator(mode="after")
    def _each_value_once(self) -> GridSpec:
        for key in ("activations", "lambdas", "seeds"):
            values = getattr(self, key) or []
            require(len(set(values)) == len(values), key, "has repeated values", "list each once")
        for key, entries in (("architectures", self.architectures), ("defences", self.defences)):
            names = [e.name if key == "architectures" else e.label for e in entries]
            for i, name in enumerate(names):
                require(
                    name not in names[:i],
                    f"{key}[{i}]",
                    f"duplicates {name}",
                    "list each entry once",
                )
        return self


class ResourcesSpec(Section):
    cpus_per_trial: float = Field(1.0, gt=0, le=4096, **fix("give each trial e.g. 1 CPU"))
    gpus_per_trial: float = Field(
        0.0, ge=0, le=64, **fix("use 0 for CPU-only trials or e.g. 0.25 to share a GPU")
    )
    max_concurrent_trials: int = Field(2, ge=1, le=100_000, **fix("use 1 or more"))
    # memory a trial (or audit) needs, in GB: set, it is reserved through Ray's `memory`
    # resource; null: estimated from the dataset and evaluation.attack_batch_size
    # (trainables/worker_memory.py) and checked against the nodes, not reserved
    memory_per_trial_gb: float | None = Field(
        None, gt=0, le=100_000, **fix("use e.g. 4, or null for the estimate")
    )
    # a trial Ray gave a GPU on a node where torch finds no CUDA device: fail it, naming the
    # node's problem (the default: a silent CPU trial would hold a GPU slot and time as a CPU
    # one), or train it on the CPU with the reason as a tag (satsweep.gpu_fallback)
    gpu_missing: Literal["fail", "cpu"] = "fail"

    @model_validator(mode="after")
    def _whole_gpus_above_one(self) -> ResourcesSpec:
        g = self.gpus_per_trial
        require(
            g <= 1 or g == int(g),
            "gpus_per_trial",
            "fractions are only allowed below 1",
            "use 0.25, 0.5, 1, 2, ...",
        )
        return self


class SchedulerSpec(Section):
    """FIFO runs every trial to the end. ASHA stops the trials that rank in the bottom part of
    their rung by `metric`: by default `robust`, the per-epoch early-stopping signal
    (evaluation.stopping_*), since ranking a robustness sweep by clean accuracy stops exactly the
    trials that trade clean accuracy for robustness."""

    name: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(2, ge=1, le=100_000, **fix("give trials at least one epoch"))
    reduction_factor: int = Field(3, ge=2, le=100, **fix("use 3 (keep the top third per rung)"))
    metric: Literal["robust", "clean_acc"] = "robust"


class SweepSpec(SweepSettings):
    name: str
    grid: GridSpec
    # the masking-aware rule the sweep audits and crowns by, and `best`/`export` read back
    selection: SelectionRule = SelectionRule()
    # list the grid (the default) or sample settings in every grid cell (sweeps/space.py)
    search: SearchSettings = SearchSettings()
    # what the report compares every arm with (tracking/compare.py)
    comparisons: Baselines = Baselines()
    resources: ResourcesSpec = ResourcesSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    storage_path: str = Field("ray_results", min_length=1, **fix("give a folder or s3:// URI"))
    tracking_uri: str | None = None
    max_failures: int = Field(1, ge=0, le=1000, **fix("use 0 to never retry, or e.g. 2"))
    # a grid of more trials runs only after `--yes` (or a typed "y"): a typo in an axis can
    # multiply a sweep's cost a thousandfold
    confirm_above: int = Field(1000, ge=1, le=10**9, **fix("use e.g. 1000"))

    @property
    def folder_name(self) -> str:
        """The sweep's name as a folder: itself when it is plain ASCII (letters, digits, `_`, `-`,
        `.`), else an ASCII rendering plus a hash of the name, so two names never share one."""
        return folder_name(self.name)

    @model_validator(mode="after")
    def _cross_checks(self) -> SweepSpec:
        require(
            usable_name(self.name),
            "name",
            f"{self.name!r} is not a usable sweep name (it names an MLflow experiment and model)",
            f"use up to {MAX_NAME} characters in any language, without '/', '\\', ':' or control "
            "characters, not starting or ending with a space",
        )
        require(
            not (self.audit.enabled and not self.audit.attacks),
            "audit.attacks",
            "is empty while audit.enabled is true: the audit would attack nothing",
            "list square and/or autoattack, or set audit.enabled: false",
        )
        self._axes_listed_or_sampled()
        longest = (
            run_name(
                max(self.architectures, key=len),
                max(self.grid.activations or ACTIVATION_NAMES, key=len),
                max(self.grid.lambdas or [0.0], key=lambda lam: len(f"{lam:g}")),
                max(self.grid.seeds),
                max(self.defences, key=len),
            )
            + "_"
            + "_".join(f"{key.rpartition('.')[2]}1.234e-05" for key in self.search.space)
        )
        require(
            len(longest) <= MAX_RUN_NAME,
            "grid.architectures",
            f"makes run names of {len(longest)} characters, more than a folder name can hold",
            f"use fewer or shorter layers (run names must stay within {MAX_RUN_NAME})",
        )
        require(
            not (self.scheduler.name == "asha" and self.scheduler.metric == "robust"
                 and self.evaluation.stopping_size == 0),
            "scheduler.metric",
            "is robust, but evaluation.stopping_size is 0 (the early-stopping signal is off)",
            "set evaluation.stopping_size (e.g. 100) or scheduler.metric: clean_acc",
        )  # fmt: skip
        require(
            not (self.tracking_uri and urlsplit(self.tracking_uri).password),
            "tracking_uri",
            "holds a password, and a spec is logged and shared",
            "drop `user:password@` from it; set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD in the environment instead",
        )
        rule = self.selection.resolved(list(self.evaluation.eps))
        require(
            rule.eps in self.evaluation.eps,
            "selection.eps",
            f"{rule.eps:g} is not in evaluation.eps",
            "pick one of the evaluation budgets",
        )
        object.__setattr__(self, "selection", rule)  # logged as a number, never "None"
        return self

    def _axes_listed_or_sampled(self) -> None:
        """lambda and the activation are grid axes or sampled: one of the two, and the sampled
        settings are ones a trial accepts (`space.check_space`)."""
        space = self.search.space
        for key, axis in (("lam", "lambdas"), ("activation", "activations")):
            require(
                getattr(self.grid, axis) is not None or key in space,
                f"grid.{axis}",
                "missing required field",
                f"list {axis} in the grid, or sample it (search.space.{key}) with search.name: "
                "random or optuna",
            )
        listed = {f"grid.{a}" for a in ("lambdas", "activations") if getattr(self.grid, a)}
        bases = [self.base_trial(defence=d) for d in self.grid.defences]
        check_space(space, bases, listed)

    def base_trial(self, **point: Any) -> TrialSettings:
        """The spec's own settings at the first value of every axis (or `point`'s): what a
        sampled setting replaces, and what a transfer twin keeps."""
        g = self.grid
        first = {
            "arch": g.architectures[0],
            "activation": (g.activations or list(ACTIVATION_NAMES))[0],
            "lam": (g.lambdas or [0.0])[0],
            "seed": g.seeds[0],
            "defence": g.defences[0],
        }
        return TrialSettings.at(self.shared(), **(first | point))

    @property
    def architectures(self) -> dict[str, ArchitectureSettings]:
        return {a.name: a for a in self.grid.architectures}

    @property
    def defences(self) -> dict[str, DefenceSettings]:
        return {d.label: d for d in self.grid.defences}

    def samples_in(self, cell: dict) -> int:
        """Configurations a search samples in a grid cell: one where nothing sampled applies
        (say, only defence settings in a cell without a defence)."""
        space = cell_space(self.search.space, self.defences[cell["defence"]])
        return self.search.num_samples if space else 1

    @property
    def num_trials(self) -> int:
        """Every trial the sweep runs: the grid's points, or for a search its cells times the
        configurations sampled in each times the seeds."""
        g = self.grid
        if self.search.sampled:
            samples = sum(self.samples_in(cell) for cell in search_cells(self))
            return samples * len(g.seeds)
        axes = (g.architectures, g.activations, g.lambdas, g.defences, g.seeds)
        return math.prod(len(a) for a in axes)


def search_cells(spec: SweepSpec) -> list[dict]:
    """The grid's listed axes but the seed, crossed: where a search samples its configurations.
    A sampled axis (lam, activation) is not in a cell: the searcher gives its value."""
    g = spec.grid
    cells = [{"arch": a, "defence": d} for d in spec.defences for a in spec.architectures]
    for key, values in (("lam", g.lambdas), ("activation", g.activations)):
        if values is not None:
            cells = [cell | {key: v} for v in sorted(values) for cell in cells]
    return cells


# ---- loading ------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a spec with both is ambiguous, so refuse it."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise SpecError(f"line {line}", f"key `{key}` appears twice", "keep one of them")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_spec(path: str | Path) -> tuple[SweepSpec, str]:
    """Read, parse and validate a spec file; returns the spec and its text (kept as artifact)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(
            str(path), "no such file", "give the path of a sweep spec YAML file, e.g. "
            "sweeps/quickstart.yaml"
        )  # fmt: skip
    data = path.read_bytes()
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(str(path), f"is {len(data)} bytes", "a sweep spec is a short YAML file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(
            str(path), f"is not UTF-8 text (byte {err.start})", "save the spec as UTF-8 YAML"
        ) from None
    if "\x00" in text:
        raise SpecError(str(path), "is not a text file", "give a YAML sweep spec")
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except SpecError as err:
        raise SpecError(f"{path}: {err.where}", err.problem, err.fix) from None
    except yaml.YAMLError as err:
        raise SpecError(str(path), f"not valid YAML ({err})", "fix the YAML syntax") from None
    return parse_spec(raw, source=path.name), text


def usable_name(name: str) -> bool:
    """An experiment and registered-model name MLflow accepts and a person can type back."""
    printable = all(ch.isprintable() for ch in name) and not set(name) & set("/\\:")
    return 0 < len(name) <= MAX_NAME and printable and name == name.strip() and name.strip(".")


def folder_name(name: str) -> str:
    """`name` where it is a safe folder name already, else its ASCII letters (accents dropped,
    the rest as `-`) and the first 8 hex digits of its SHA-1."""
    import hashlib
    import unicodedata

    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    safe = FOLDER_SAFE.sub("-", ascii_name).strip("-.")
    if safe == name:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{safe[:80]}-{digest}" if safe else f"sweep-{digest}"


def parse_spec(raw: object, source: str = "spec") -> SweepSpec:
    """Build and validate a SweepSpec from parsed YAML."""
    if not isinstance(raw, dict):
        raise SpecError(
            f"{source}: top level",
            f"expected a mapping, got {_kind(raw)}",
            "write the spec as `key: value` lines",
        )
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as err:
        errors = err.errors()
        where, problem, fix_ = _explain(errors[0], raw)
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        raise SpecError(
            f"{source}: {where}" if where else source,
            problem + (more if len(errors) > 1 else ""),
            fix_,
        ) from None


# ---- turning pydantic's errors into a person's ---------------------------------------------


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).startswith(("function-", "literal[")):
            out += f".{part}" if out else str(part)
    return out


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model class that holds the field at `loc` (for its known keys and fix hints)."""
    cls: Any = SweepSpec
    for part in loc:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part) if hasattr(cls, "model_fields") else None
        if field is None:
            return None
        cls = _model_in(field.annotation)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _field_fix(loc: tuple) -> str | None:
    names = [p for p in loc if isinstance(p, str)]
    if not names:
        return None
    holder = _model_at(tuple(p for p in loc[: loc.index(names[-1])]))
    field = holder.model_fields.get(names[-1]) if holder else None
    if field is None:
        return None
    extras = [field.json_schema_extra] + [
        m.json_schema_extra
        for arg in typing.get_args(field.annotation)
        for m in getattr(arg, "__metadata__", ())
        if hasattr(m, "json_schema_extra")
    ]
    for extra in extras:
        if isinstance(extra, dict) and "fix" in extra:
            return str(extra["fix"])
    return None


# keys of earlier specs, and where they went (one meaning per word: "check" is preflight's)
MOVED = {
    "audit.rank_eps": "selection.eps",
    "evaluation.check_size": "evaluation.stopping_size",
    "evaluation.check_steps": "evaluation.stopping_steps",
    "evaluation.check_eps": "evaluation.stopping_eps",
    "grid.defences.check_size": "overfit_size",
    "grid.defences.check_steps": "overfit_steps",
    "grid.defences.check_drop": "overfit_drop",
}


# keys of earlier specs that no longer mean anything: (what happened, the fix)
REMOVED = {
    "audit.size": (
        "was removed: the audit attacks the evaluation points, the ones its worst case is on",
        "delete it (set evaluation.size for more points)",
    ),
}


def _unindexed(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not isinstance(p, int))


COMPARISONS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}
TYPE_FIXES = {
    "int_type": ("a whole number", "write an integer such as 10"),
    "int_from_float": ("a whole number", "write an integer such as 10"),
    "float_type": ("a number", "write a number such as 0.5"),
    "bool_type": ("true or false", "use true or false"),
    "string_type": ("text", "write a string"),
    "list_type": ("a list", "write it as [a, b, ...] (a one-item list is fine)"),
    "model_type": ("a mapping", "write it as `key: value` lines"),
    "model_attributes_type": ("a mapping", "write it as `key: value` lines"),
    "dict_type": ("a mapping", "write it as `key: value` lines"),
}


def _explain(error: dict, raw: dict) -> tuple[str, str, str]:
    """(dotted field, what was wrong, the fix) for one pydantic error."""
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    where = _path(loc)
    ctx = error.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, FieldProblem):
        return _path((*loc, *filter(None, cause.where.split(".")))), cause.problem, cause.fix
    if kind == "missing":
        return where, "missing required field", f"add `{loc[-1]}:` to the spec"
    if kind == "extra_forbidden" and _unindexed(loc) in REMOVED:
        return where, *REMOVED[_unindexed(loc)]
    if kind == "extra_forbidden" and _unindexed(loc) in MOVED:
        return where, "was renamed", f"write it as `{MOVED[_unindexed(loc)]}` (same meaning)"
    if kind == "extra_forbidden":
        holder = _model_at(loc[:-1])
        known = list(holder.model_fields) if holder else []
        near = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean `{near[0]}`?" if near else f"known keys: {', '.join(known)}"
        return where, "unknown key", f"remove it or rename it ({hint})"
    if kind == "literal_error" and value == "robust_check" and loc[-1] == "metric":
        return where, "robust_check was renamed", "write scheduler.metric: robust (same meaning)"
    if kind == "literal_error":
        return where, f"unknown value {value!r}", f"use one of: {ctx.get('expected', '')}"
    if kind in TYPE_FIXES:
        wanted, fix_ = TYPE_FIXES[kind]
        if kind == "float_type" and isinstance(value, str) and _looks_numeric(value):
            fix_ += " (YAML reads 1e-3 as text: write 1.0e-3)"
        return where, f"expected {wanted}, got {_kind(value)}", fix_
    if kind in ("finite_number",):
        return where, f"must be a finite number (got {value})", "write a finite number"
    if kind in COMPARISONS:
        bound = next(iter(ctx.values()))
        fix_ = _field_fix(loc) or f"use a value {COMPARISONS[kind]} {bound}"
        return where, f"must be {COMPARISONS[kind]} {bound} (got {value})", fix_
    if kind == "too_short":
        return where, "is empty", "list at least one value (an empty axis makes an empty grid)"
    return where, error["msg"].lower(), _field_fix(loc) or "see the spec reference in the README"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _kind(value: object) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "nothing (null)"
