"""What the planned audit costs against the audit it replaced, on fixed trained models.

Three held models on the MNIST subset (the digits where it is absent), MLP 200-200, trained here:
a PGD-trained relu model (robust: much stands after the cheap tier), a sigmoid model with its
weights scaled x100 (masked: gradients vanish in float32), and a plainly trained relu model at a
budget it has no defence against (nothing stands). Each gets the full cheap tier at the shipped
defaults, then:

- `old`: the audit as it was: Square and AutoAttack `standard` (`run_standard_evaluation`), each
  on every point of the 1,000-point audit set that contained the evaluation points;
- `old, same points`: the same attacks on the evaluation points only;
- `new`: `trainables.audit.audit_attacks` on the evaluation points.

Then the audit's share of a whole sweep's compute (`sweep/audit_share`: its attack seconds over
training, the cheap tier and the audit), on the quickstart and on a small adversarial-training
sweep at the shipped audit defaults (target < 0.5).

Rows: the new audit's seconds over the old's (target <= 0.35), the same against the old on the
same points, and per model and eps the per-example worst case of new and old, in points. The
old audit ran Square twice on the points AutoAttack leaves standing (its own run and
AutoAttack's Square stage, with different random draws); the new one runs it once, so on a
model where Square's random draws decide (the masked one) the old can be a point lower.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import result
from benchmarks.sweeps import REPO, launch, sweep_metrics, write_spec
from benchmarks.train_loop import MNIST10K
from trainables.audit import audit_attacks
from trainables.data import load_dataset
from trainables.evaluate import (
    AttackResult,
    correct,
    eval_indices,
    evaluate_robustness,
    merge_audit,
    per_example_record,
    run_attacks,
    share,
    stored_results,
    worst_case,
)
from trainables.settings import ArchitectureSettings, DefenceSettings, SweepSettings, TrialSettings
from trainables.train import new_state, train

EVAL_POINTS = 500
OLD_AUDIT_POINTS = 1000  # the old default audit.size
OLD_AUDIT = ("square", "autoattack")
HELD = {  # name: (activation, defence, eps audited)
    "robust": ("relu", {"kind": "pgd", "eps": 0.1, "steps": 10}, (0.1, 0.2)),
    "masked": ("sigmoid", {"kind": "none"}, (0.1, 0.2)),
    "nothing standing": ("relu", {"kind": "none"}, (0.3,)),
}


def _settings(dataset: str, data_dir: str | None, eps: tuple[float, ...]) -> SweepSettings:
    return SweepSettings.model_validate({
        "dataset": {"name": dataset, "data_dir": data_dir},
        "training": {"epochs": 3, "batch_size": 100, "optimizer": {"lr": 1.0e-3},
                     "penalty": {"warmup_epochs": 0}},
        "evaluation": {"size": EVAL_POINTS, "eps": list(eps)},
    })  # fmt: skip


# A small adversarial-training sweep at the shipped audit defaults: single-step and TRADES, with
# and without the penalty, three budgets, the top two audited.
DEFENCE_SPEC = {
    "name": "defence-costs",
    "dataset": {"name": "mnist", "data_dir": str(MNIST10K)},
    "grid": {
        "architectures": [{"kind": "mlp", "hidden": [200, 200]}],
        "activations": ["relu"],
        "lambdas": [0.0, 1.0],
        "defences": [{"kind": "fgsm_rs", "eps": 0.1},
                     {"kind": "trades", "eps": 0.1, "steps": 10, "beta": 1.0}],
    },
    "training": {"epochs": 4, "batch_size": 100, "optimizer": {"lr": 1.0e-3},
                 "penalty": {"warmup_epochs": 2}},
    "evaluation": {"size": 500, "eps": [0.05, 0.1, 0.2], "apgd_iterations": 50},
    "audit": {"top_k": 2},
    "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 2},
}  # fmt: skip


def held_model(data, dataset: str, data_dir: str | None, name: str):
    activation, defence, eps = HELD[name]
    cfg = TrialSettings.at(
        _settings(dataset, data_dir, eps), arch=ArchitectureSettings(kind="mlp", hidden=[200, 200]),
        activation=activation, lam=0.0, seed=0, defence=DefenceSettings(**defence),
    )  # fmt: skip
    state = new_state(cfg, data, torch.device("cpu"))
    for _ in train(cfg, data, state):
        pass
    model = state.model.eval()
    if name == "masked":  # saturate: |h| mostly > 20, softmax one-hot in float32
        with torch.no_grad():
            for layer in (model.dense[0], model.out):
                layer.weight *= 100
                layer.bias *= 100
    return cfg, model


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _on(results: list[AttackResult], rows: torch.Tensor) -> list[AttackResult]:
    """Results on a larger point set, cut down to the evaluation points' rows."""
    return [AttackResult(r.attack, r.eps, r.robust[rows].cpu(), r.seconds) for r in results]


def compare(data, cfg: TrialSettings, model) -> dict:
    e = cfg.evaluation
    idx = eval_indices(len(data.y_test), EVAL_POINTS, e.seed)
    big = eval_indices(len(data.y_test), OLD_AUDIT_POINTS, e.seed)  # contains idx
    rows = torch.tensor([big.tolist().index(i) for i in idx.tolist()])
    x, y = data.x_test[idx], data.y_test[idx]
    _, _, cheap = evaluate_robustness(model, x, y, cfg, None)
    stored = stored_results(per_example_record(idx, cheap, correct(model, x, y), e.seed))
    new, new_s = _timed(lambda: audit_attacks(model, x, y, stored, cfg))
    old, old_s = _timed(lambda: run_attacks(model, data.x_test[big], data.y_test[big], OLD_AUDIT,
                                            tuple(e.eps), cfg))  # fmt: skip
    same, same_s = _timed(lambda: run_attacks(model, x, y, OLD_AUDIT, tuple(e.eps), cfg))
    worst = {}
    for eps in e.eps:
        worst[eps] = tuple(
            share(worst_case(merge_audit(stored, audit), eps))
            for audit in (new.results, _on(old, rows), same)
        )
    return {"new": new_s, "old": old_s, "same": same_s, "worst": worst, "outcome": new}


def run() -> list[dict]:
    torch.manual_seed(0)
    dataset, data_dir = ("mnist", str(MNIST10K)) if MNIST10K.exists() else ("digits", None)
    data = load_dataset(dataset, data_dir, False)
    rows, new_total, old_total, same_total = [], 0.0, 0.0, 0.0
    for name in HELD:
        cfg, model = held_model(data, dataset, data_dir, name)
        c = compare(data, cfg, model)
        new_total, old_total, same_total = (
            new_total + c["new"],
            old_total + c["old"],
            same_total + c["same"],
        )
        print(f"audit, {name}: new {c['new']:.1f} s, old {c['old']:.1f} s "
              f"({c['same']:.1f} s on the same points); skipped eps {c['outcome'].skipped_eps}, "
              f"stages read {c['outcome'].reused}")  # fmt: skip
        for eps, (new, old, same) in c["worst"].items():
            rows.append(result(
                f"audit worst case, {name} at eps {eps:g} (new vs old on the same points; old "
                f"1000-point audit: {100 * old:.1f})", 100 * new, "points of 100", 100 * same,
            ))  # fmt: skip
    tag = f"{dataset} mlp-200x200, robust + masked + nothing standing, {EVAL_POINTS} points"
    shares = quickstart_share() + (defence_sweep_share() if MNIST10K.exists() else [])
    return [
        result(f"audit seconds, new vs old default ({OLD_AUDIT_POINTS}-point audit set; {tag})",
               new_total, "seconds (lower is better)", old_total),
        result(f"audit seconds, new vs old on the same points ({tag})", new_total,
               "seconds (lower is better)", same_total),
        *rows,
        *shares,
    ]  # fmt: skip


def audit_share(what: str, m: dict[str, float]) -> dict:
    """The audit's attack seconds against all the trials' compute (training, cheap tier, audit)."""
    total = (
        m["sweep/train_seconds"] + m["sweep/cheap_attack_seconds"] + m["sweep/audit_attack_seconds"]
    )
    return result(f"{what}: audit share of the trials' compute (training "
                  f"{m['sweep/train_seconds']:.0f} s, cheap tier "
                  f"{m['sweep/cheap_attack_seconds']:.0f} s)", m["sweep/audit_attack_seconds"],
                  "seconds", total)  # fmt: skip


def defence_sweep_share() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        launch(folder, write_spec(folder, DEFENCE_SPEC))
        m = sweep_metrics(folder, DEFENCE_SPEC["name"])
    return [audit_share("small defence sweep (fgsm_rs + trades, 4 trials)", m)]


def quickstart_share() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        launch(folder, REPO / "sweeps" / "quickstart.yaml")
        return [audit_share("quickstart", sweep_metrics(folder, "quickstart"))]


if __name__ == "__main__":
    for r in run():
        print(r["name"], r["value"], r["baseline"], r["ratio"])
