"""What one trial needs, as plain values. Defaults live in the sweep spec (sweeps/spec.py), not
here: a TrialConfig is always built from a validated spec, or written out in full by a test."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from trainables.models import ArchConfig

# Stated once and logged with every trial: training and evaluation run in float32, no AMP/TF32.
DTYPE = "float32"


def run_name(arch_name: str, activation: str, lam: float, seed: int) -> str:
    """Readable, unique within a sweep: `mlp-200x200_sigmoid_lam30_seed0`."""
    return f"{arch_name}_{activation}_lam{lam:g}_seed{seed}"


@dataclass(frozen=True)
class EvalConfig:
    """Robustness evaluation of the final model (and cheap attacks every `every_epochs`)."""

    size: int  # points of the fixed, seeded evaluation subset of the test split
    seed: int  # seed of that subset's permutation (and of the attacks' randomness)
    eps: tuple[float, ...]  # L-infinity budgets on [0, 1] inputs
    unbounded_eps: float  # the "unbounded" check: accuracy should go to ~0 here
    attacks: tuple[str, ...]
    pgd_steps: int
    pgd_restarts: int
    pgd_step_factor: float  # PGD step size = factor * eps / steps
    apgd_iterations: int
    noise_draws: int
    bpda_temperature: float
    square_queries: int  # audit tier
    every_epochs: int  # 0: only at the end
    zero_grad_threshold: float  # masking flag thresholds, see trainables/masking.py
    gap_threshold: float
    tolerance: float
    unbounded_threshold: float


@dataclass(frozen=True)
class TrialConfig:
    dataset: str
    data_dir: str | None
    download: bool
    arch: ArchConfig
    activation: str
    lam: float
    seed: int
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    penalty_reduction: str
    lambda_schedule: str
    warmup_epochs: int
    saturation_threshold: float
    eval_batch_size: int
    checkpoint_every: int
    evaluation: EvalConfig
    dtype: str = field(default=DTYPE, init=False)

    @property
    def run_name(self) -> str:
        return run_name(self.arch.name, self.activation, self.lam, self.seed)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["evaluation"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in d["evaluation"].items()
        }
        d["arch"] = {
            "kind": self.arch.kind,
            "hidden": list(self.arch.hidden),
            "channels": list(self.arch.channels),
            "name": self.arch.name,
        }
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrialConfig:
        """Inverse of `to_dict`; ignores keys that are not trial fields (e.g. tracking info)."""
        a = d["arch"]
        arch = ArchConfig(a["kind"], tuple(a["hidden"]), tuple(a.get("channels", ())))
        ev = {k: tuple(v) if isinstance(v, list) else v for k, v in d["evaluation"].items()}
        names = {f for f in cls.__dataclass_fields__ if f not in ("arch", "dtype", "evaluation")}
        return cls(
            arch=arch, evaluation=EvalConfig(**ev), **{k: v for k, v in d.items() if k in names}
        )
