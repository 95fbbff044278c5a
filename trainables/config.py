"""What one trial needs, as plain values. Defaults live in the sweep spec (sweeps/spec.py), not
here: a TrialConfig is always built from a validated spec, or written out in full by a test."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from trainables.models import ArchConfig

# Stated once and logged with every trial: training and evaluation run in float32, no AMP/TF32.
DTYPE = "float32"


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
    dtype: str = field(default=DTYPE, init=False)

    @property
    def run_name(self) -> str:
        """Readable, unique within a sweep: `mlp-200x200_sigmoid_lam30_seed0`."""
        return f"{self.arch.name}_{self.activation}_lam{self.lam:g}_seed{self.seed}"

    def to_dict(self) -> dict:
        d = asdict(self)
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
        names = {f for f in cls.__dataclass_fields__ if f not in ("arch", "dtype")}
        return cls(arch=arch, **{k: v for k, v in d.items() if k in names})
