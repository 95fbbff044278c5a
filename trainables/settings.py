"""A trial's settings: one typed declaration and the single home of every default.

The sweep spec (`sweeps.spec.SweepSpec`) is these sections plus the grid and what only the
driver needs; a trial receives `TrialSettings`, the same sections plus its grid point. Both are
logged as MLflow params under the same dotted names (`training.optimizer.lr`), so the compare
view lines the sweep run and its trials up.

Validation is pydantic's (strict types, no NaN or infinity, no unknown keys); a check that needs
several fields raises `FieldProblem`, which names the field, the problem and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    computed_field,
    field_validator,
    model_validator,
)

from trainables.names import ACTIVATION_NAMES, AUDIT_ATTACKS, CHEAP_ATTACKS, DATASETS

# Stated once and logged with every trial (under `numerics.`): what the numbers mean.
NUMERICS = {
    "dtype": "float32",  # training and evaluation; no AMP, no TF32
    "tf32": False,
    "penalty_batch_reduction": "mean",
    "saturation_rule": "activation table: relu h <= 0; sigmoid/tanh |h| > saturation_threshold",
    "weight_kurtosis_kind": "excess (Fisher)",
    "train_acc_kind": "running accuracy over the epoch's batches",
    "robust_acc_counts": "points correct on the clean input and on the attack's output",
    "transfer_surrogate": "the lambda = 0 twin: same architecture, activation, defence, seed and "
    "recipe, trained once per sweep (the model itself when lambda = 0)",
    "early_stopping_signal": "per example the worse of PGD-CE and PGD-margin, float32, on a fixed "
    "prefix of the evaluation subset",
}
GRID_AXES = ("arch", "activation", "lam", "defence", "seed")  # what varies between trials
NAME_AXES = ("lam", "activation", "defence", "arch")  # run names: the order a reader compares
MAX_WIDTH = 1 << 16  # units or channels of one layer: far beyond what fits these datasets
MAX_EPOCHS = 100_000

ActivationName = Literal[ACTIVATION_NAMES]  # type: ignore[valid-type]
CheapAttack = Literal[CHEAP_ATTACKS]  # type: ignore[valid-type]
AuditAttack = Literal[AUDIT_ATTACKS]  # type: ignore[valid-type]
Eps = Annotated[float, Field(gt=0, le=1, json_schema_extra={"fix": "use e.g. 0.1 (MNIST)"})]
Fraction = Annotated[float, Field(ge=0, le=1)]


class FieldProblem(ValueError):
    """A cross-field check failed: `where` is the dotted path below the model that raised it."""

    def __init__(self, where: str, problem: str, fix: str):
        self.where, self.problem, self.fix = where, problem, fix
        super().__init__(f"{where}: {problem}. Fix: {fix}")


def require(ok: bool, where: str, problem: str, fix: str) -> None:
    if not ok:
        raise FieldProblem(where, problem, fix)


def fix(text: str) -> dict[str, Any]:
    """Field(...) extra carrying the fix a person should apply when the value is refused."""
    return {"json_schema_extra": {"fix": text}}


class Section(BaseModel):
    """Strict: 1.0 is not an int, "3" is not a number, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class DatasetSettings(Section):
    name: Literal[DATASETS] = "digits"  # type: ignore[valid-type]
    # a torchvision root; relative paths resolve against the working directory
    data_dir: str | None = None
    download: bool = False

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        """Ray workers run in other directories: resolve against the driver's one, once."""
        return str(Path(value).expanduser().resolve()) if value else value

    @model_validator(mode="after")
    def _needs_a_root(self) -> DatasetSettings:
        require(
            self.name == "digits" or bool(self.data_dir),
            "data_dir",
            f"required for dataset {self.name!r}",
            "point it at a torchvision root folder (and set download: true to fetch it there)",
        )
        return self


class ArchitectureSettings(Section):
    """`mlp`: dense hidden widths. `cnn`: 3x3 conv channels (each conv, activation, 2x2 max-pool),
    then dense hidden widths."""

    kind: Literal["mlp", "cnn"]
    hidden: list[Annotated[int, Field(gt=0, le=MAX_WIDTH, **fix("use positive layer widths"))]] = []
    channels: list[Annotated[int, Field(gt=0, le=MAX_WIDTH, **fix("use positive channels"))]] = []

    @computed_field  # logged as `arch.name`
    @property
    def name(self) -> str:
        dense = "x".join(map(str, self.hidden)) or "linear"
        if self.kind == "mlp":
            return f"mlp-{dense}"
        return f"cnn-c{'x'.join(map(str, self.channels))}-{dense}"

    @model_validator(mode="after")
    def _layers_fit_the_kind(self) -> ArchitectureSettings:
        require(
            self.kind == "cnn" or not self.channels,
            "channels",
            "an mlp has no conv channels",
            "use kind: cnn, or drop channels",
        )
        require(
            self.kind == "mlp" or bool(self.channels),
            "channels",
            "a cnn needs at least one conv layer",
            "add channels: [8, 16], or use kind: mlp",
        )
        require(
            bool(self.hidden) or bool(self.channels),
            "hidden",
            "has no hidden layer, so there is nothing to saturate",
            "add hidden: [64]",
        )
        return self


class OptimizerSettings(Section):
    name: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10, **fix("use e.g. 1.0e-3"))
    momentum: float = Field(0.0, ge=0, lt=1, **fix("use e.g. 0.9 (sgd only)"))
    weight_decay: float = Field(0.0, ge=0, le=1, **fix("use 0, or e.g. 5.0e-4"))


class PenaltySettings(Section):
    """The saturation penalty: per layer `sum` or `mean` of psi over units, summed over layers,
    averaged over the batch; lambda held (`constant`) or ramped from 0 (`linear`)."""

    reduction: Literal["sum", "mean"] = "mean"
    schedule: Literal["constant", "linear"] = "linear"
    warmup_epochs: int = Field(5, ge=0, le=MAX_EPOCHS, **fix("use 0 for no warm-up"))


class TrainingSettings(Section):
    epochs: int = Field(20, ge=1, le=MAX_EPOCHS, **fix("train for at least one epoch"))
    batch_size: int = Field(64, ge=1, le=1 << 20, **fix("use e.g. 64"))
    eval_batch_size: int = Field(1000, ge=1, le=1 << 20, **fix("use e.g. 1000"))
    optimizer: OptimizerSettings = OptimizerSettings()
    penalty: PenaltySettings = PenaltySettings()
    # clip the gradient's global L2 norm to this before each step (None: no clipping)
    grad_clip_norm: float | None = Field(None, gt=0, le=1e6, **fix("use e.g. 1.0, or null"))
    # |h| beyond which a sigmoid/tanh unit counts as saturated
    saturation_threshold: float = Field(5.0, gt=0, le=1e4, **fix("use e.g. 5.0"))
    # epochs between checkpoints (the last epoch is always saved); a resumed trial repeats at
    # most checkpoint_every - 1 epochs
    checkpoint_every: int = Field(1, ge=1, le=MAX_EPOCHS, **fix("checkpoint every N >= 1 epochs"))
    # and at most one checkpoint per this many seconds of training (the last epoch is always
    # saved): Tune rewrites its whole experiment state when a trial has checkpointed twice since
    # its last snapshot, so per-epoch checkpoints of short epochs made that rewrite, whose cost
    # grows with the trial count, run once per trial (docs/design.md). A retried trial repeats
    # at most this many seconds more.
    checkpoint_min_seconds: float = Field(
        30.0, ge=0, le=86_400, **fix("use e.g. 30, or 0 to save every checkpoint_every epochs")
    )

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainingSettings:
        p = self.penalty
        require(
            p.schedule != "linear" or p.warmup_epochs <= self.epochs,
            "penalty.warmup_epochs",
            f"is longer than training ({p.warmup_epochs} > {self.epochs} epochs)",
            "shorten the warm-up or train longer",
        )
        return self


DEFENCES = ("none", "fgsm_rs", "pgd", "trades")
# the settings of a defence its kind ignores (`none` ignores them all): run names leave them
# out, and a search does not sample them
IGNORED_BY_KIND = {"fgsm_rs": {"steps", "beta"}, "pgd": {"beta"}, "trades": set()}


class DefenceSettings(Section):
    """A training-time defence: one entry of `grid.defences`.

    - `none`: plain training.
    - `fgsm_rs`: one signed step of `step_size` (default 1.25 eps) from a uniform start in the
      eps-ball (Wong, Rice & Kolter 2020, "Fast is better than free").
    - `pgd`: `steps` signed steps of `step_size` (default 2.5 eps / steps) from a uniform start,
      trained on the last iterate (Madry et al. 2018; their MNIST recipe: eps 0.3, 40 x 0.01).
    - `trades`: clean cross-entropy + beta * KL(f(x) || f(x')), x' by PGD on that KL from
      x + 0.001 N(0, 1) (Zhang et al. 2019; their MNIST script: beta 1, eps 0.3, 40 x 0.01).

    The training attack is crafted with the model in eval mode, inside the eps-ball and [0, 1],
    by the evaluation's PGD code (`attacks.gradient.pgd_train`).
    """

    kind: Literal[DEFENCES] = "none"  # type: ignore[valid-type]
    eps: float = Field(0.3, gt=0, le=1, **fix("use e.g. 0.1 or 0.3 (MNIST)"))
    steps: int = Field(40, ge=1, le=10_000, **fix("use e.g. 10 or 40"))
    step_size: float | None = Field(None, gt=0, le=1, **fix("use e.g. 0.01, or null"))
    beta: float = Field(1.0, gt=0, le=1e4, **fix("use 1.0 (TRADES on MNIST) or 6.0"))
    # eps ramps linearly from 0 over the first warmup_epochs epochs (0: full eps at once)
    warmup_epochs: int = Field(0, ge=0, le=MAX_EPOCHS, **fix("use 0 for no warm-up"))
    # which forward pass the saturation penalty is taken on: `adversarial` (default) is the
    # pass the loss is trained on, so it costs nothing extra and saturates units where the
    # model is attacked; `clean` keeps the paper's objective at the price of one more forward
    penalty_on: Literal["adversarial", "clean"] = "adversarial"
    # the catastrophic-overfitting watch each epoch: PGD (overfit_steps steps) accuracy on a
    # fixed batch of overfit_size training points; it fires when it falls by more than
    # overfit_drop below its best epoch so far (Wong et al.'s signal)
    overfit_size: int = Field(100, ge=1, le=100_000, **fix("use e.g. 100"))
    overfit_steps: int = Field(10, ge=1, le=1000, **fix("use e.g. 10"))
    overfit_drop: float = Field(0.2, gt=0, le=1, **fix("use e.g. 0.2"))
    keep_best: bool = False  # the remedy: end with the weights of the best epoch by that watch

    @property
    def alpha(self) -> float:
        """The step size in force (the default depends on the kind)."""
        if self.step_size is not None:
            return self.step_size
        return 1.25 * self.eps if self.kind == "fgsm_rs" else 2.5 * self.eps / self.steps

    def reads(self, name: str) -> bool:
        """Does a defence of this kind use its setting `name`?"""
        return self.kind != "none" and name not in IGNORED_BY_KIND[self.kind]

    @property
    def label(self) -> str:
        """Short and unique within a grid: it goes into run names."""
        if self.kind == "none":
            return "none"
        parts = [self.kind, f"e{self.eps:.3g}"]
        if self.reads("steps"):
            parts.append(f"k{self.steps}")
        parts.append(f"a{self.alpha:.3g}")
        if self.reads("beta"):
            parts.append(f"b{self.beta:.3g}")
        if self.warmup_epochs:
            parts.append(f"w{self.warmup_epochs}")
        if self.penalty_on == "clean":
            parts.append("pclean")
        if self.keep_best:
            parts.append("best")
        return "-".join(parts)


class MaskingSettings(Section):
    """Thresholds of the gradient-masking flags (trainables/masking.py), as fractions."""

    zero_grad_threshold: Fraction = 0.05  # points with an exactly-zero input gradient
    gap_threshold: Fraction = 0.10  # naive minus stabilised attack accuracy
    tolerance: Fraction = 0.02  # slack for "beats" and "non-monotone" comparisons
    unbounded_threshold: Fraction = 0.05  # PGD-CE accuracy allowed at the unbounded eps


def _steps(default: int) -> Any:
    return Field(default, ge=1, le=1_000_000, **fix(f"use e.g. {default}"))


class EvaluationSettings(Section):
    size: int = Field(1000, ge=1, le=1 << 24, **fix("use e.g. 1000"))  # capped at the test split
    seed: int = Field(0, ge=0, le=2**63 - 1, **fix("use a seed >= 0"))
    eps: list[Eps] = Field([0.05, 0.1, 0.2, 0.3], min_length=1)
    unbounded_eps: Eps = 1.0  # accuracy should reach ~0 here: the whole [0, 1] box
    attacks: list[CheapAttack] = Field(list(CHEAP_ATTACKS), min_length=1)
    pgd_steps: int = _steps(40)
    pgd_restarts: int = _steps(1)
    pgd_step_factor: float = Field(2.5, gt=0, le=100, **fix("use 2.5"))  # step = factor*eps/steps
    apgd_iterations: int = _steps(100)
    noise_draws: int = _steps(100)
    bpda_temperature: float = Field(4.0, gt=0, le=1e4, **fix("use 4.0"))
    # points attacked at once; each batch is attacked with the same seed, as AutoAttack batches
    # (so an evaluation set no larger than this gives the same numbers as one batch). The
    # attacks' heap grows with it: up to ~1,000 x one batch of inputs (trainables/worker_memory.py)
    attack_batch_size: int = Field(500, ge=1, le=1 << 20, **fix("use e.g. 500"))
    every_epochs: int = Field(0, ge=0, le=MAX_EPOCHS, **fix("use 0 to turn off"))  # FGSM, PGD-CE
    # the early-stopping signal, measured each epoch where ASHA ranks by it (`scheduler.metric`):
    # per example, the worse of PGD-CE and PGD-margin (stopping_steps steps) at stopping_eps on
    # the first stopping_size evaluation points; the margin loss keeps softmax saturation from
    # inflating it
    stopping_size: int = Field(100, ge=0, le=100_000, **fix("use e.g. 100, or 0 to turn it off"))
    stopping_steps: int = Field(10, ge=1, le=1000, **fix("use e.g. 10"))
    stopping_eps: Eps = 0.1
    masking: MaskingSettings = MaskingSettings()
    # collapsed: the most predicted class covers >= collapse_share of the evaluation points,
    # or clean accuracy <= collapse_chance_factor / classes
    collapse_share: Fraction = 0.5
    collapse_chance_factor: float = Field(1.5, ge=0, le=100, **fix("use 1.5"))


class AuditSettings(Section):
    """Square and AutoAttack `standard` after the grid, on the evaluation points of the top-k
    trials by the selection rule (the spec's `selection`) and of every flagged trial. At
    `square_queries` 5000 (AutoAttack's budget) Square's one run is also AutoAttack's Square."""

    enabled: bool = True
    top_k: int = Field(2, ge=0, le=1_000_000, **fix("use 0 to audit flagged trials only"))
    eps: list[Eps] | None = Field(None, min_length=1)  # default: evaluation.eps
    attacks: list[AuditAttack] = list(AUDIT_ATTACKS)
    square_queries: int = _steps(5000)


class SweepSettings(Section):
    """The sections every trial of a sweep shares."""

    dataset: DatasetSettings = DatasetSettings()
    training: TrainingSettings = TrainingSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    audit: AuditSettings = AuditSettings()

    def shared(self) -> SweepSettings:
        """Just these sections (a subclass's extra fields dropped), to hand to the trials."""
        return SweepSettings(**{name: getattr(self, name) for name in SweepSettings.model_fields})


class TrialSettings(SweepSettings):
    """One grid point plus the shared sections: everything one trial's numbers depend on."""

    arch: ArchitectureSettings
    activation: ActivationName
    lam: float = Field(ge=0)
    seed: int = Field(ge=0)
    defence: DefenceSettings = DefenceSettings()
    # the order of the axes in the run name (`name_order`): the sweep's, not a setting
    name_order: tuple[str, ...] = Field(NAME_AXES, exclude=True)
    # the dotted settings a search sampled for this trial (not lam or the activation, which
    # are in every name): they end its run name, so sampled trials never share a twin's name
    sampled: tuple[str, ...] = Field((), exclude=True)

    @classmethod
    def at(cls, shared: SweepSettings, **point: Any) -> TrialSettings:
        return cls(**{name: getattr(shared, name) for name in SweepSettings.model_fields}, **point)

    @property
    def run_name(self) -> str:
        name = run_name(self.arch.name, self.activation, self.lam, self.seed, self.defence.label,
                        self.name_order)  # fmt: skip
        return "_".join([name, *self.sampled_labels()])

    def sampled_labels(self) -> list[str]:
        """`lr0.001234` per sampled setting: its last name part (two where two would clash)
        and its value to 4 significant digits."""
        last = [key.rpartition(".")[2] for key in self.sampled]
        labels = []
        for key, short in zip(self.sampled, last, strict=True):
            label = short if last.count(short) == 1 else "-".join(key.split(".")[-2:])
            value = getattr_dotted(self, key)
            labels.append(f"{label}{value:.4g}" if isinstance(value, float) else f"{label}{value}")
        return labels

    def params(self) -> dict[str, str]:
        """MLflow params: the settings under their dotted spec names, the numerics, and the
        defence's kind as the flat param `defence` (its settings are `defence.*`)."""
        dump = self.model_dump(mode="json")
        dump["defence"]["step_size"] = self.defence.alpha  # the value in force, not null
        return {**flatten({**dump, "numerics": NUMERICS}), "defence": self.defence.kind}


def getattr_dotted(settings: BaseModel, dotted: str) -> Any:
    """The value of a setting by its dotted spec name (`training.optimizer.lr`)."""
    for part in dotted.split("."):
        settings = getattr(settings, part)
    return settings


def with_settings(model: Section, overrides: dict[str, Any]) -> Any:
    """`model` with the settings at the dotted names in `overrides` replaced and every level
    above them validated again (strict types, bounds, cross-field checks): how a sampled
    configuration becomes a trial. Raises pydantic's ValidationError, located below `model`."""
    data = dict(model)  # fields only: computed ones (`arch.name`) are not settings
    for dotted, value in overrides.items():
        head, _, rest = dotted.partition(".")
        data[head] = with_settings(data[head], {rest: value}) if rest else value
    return type(model).model_validate(data)


def name_order(varying) -> tuple[str, ...]:
    """The axes that vary within the sweep first, then the rest, each group in NAME_AXES order:
    the start of a name is what MLflow's run list shows (about 16 characters)."""
    return tuple(sorted(NAME_AXES, key=lambda axis: (axis not in varying, NAME_AXES.index(axis))))


def run_name(
    arch_name: str,
    activation: str,
    lam: float,
    seed: int,
    defence: str = "none",
    order: tuple[str, ...] = NAME_AXES,
) -> str:
    """Readable, unique within a sweep, the axes in `order` then the seed:
    `lam30_sigmoid_mlp-200x200_seed0`; the defence's label appears unless it is `none`:
    `lam0_relu_pgd-e0.1-k10-a0.025_mlp-200x200_seed0`."""
    parts = {"lam": f"lam{lam:g}", "activation": activation, "arch": arch_name,
             "defence": "" if defence == "none" else defence}  # fmt: skip
    return "_".join([parts[axis] for axis in order if parts[axis]] + [f"seed{seed}"])


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}: MLflow params are flat strings."""
    flat = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = str(value)
    return flat
