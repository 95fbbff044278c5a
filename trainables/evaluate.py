"""The robustness evaluation of one model: a fixed evaluation subset, every attack at every
eps, per-example worst case, the masking diagnostics, and the audit's merge into them.

Worst case is per example (AutoAttack-style): a point counts as robust at eps only if it is
classified correctly clean and survives every attack run on it. It is never a minimum of
aggregate accuracies. No Ray, no MLflow: `trainable.py` logs what this returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from tracking import metric_names as names
from tracking.evidence import wilson
from trainables.attacks import ATTACKS
from trainables.attacks.autoattack import AUTOATTACK_APGD_ITERATIONS
from trainables.data import Dataset, fixed_subset, selection_points
from trainables.masking import UNBOUNDED_ATTACK, diagnose, zero_gradient_fraction
from trainables.settings import SweepSettings, TrialSettings

BOUND_TOLERANCE = 1e-6  # float32 rounding when projecting onto the eps-ball


class AttackBoundsError(RuntimeError):
    """An attack returned a point outside the eps-ball or outside [0, 1]: a bug, never a result."""


@dataclass
class AttackResult:
    attack: str
    eps: float
    robust: torch.Tensor  # bool, one per evaluation point
    seconds: float
    # False: the attack ran only on the points the earlier ones left standing (`robust` is then
    # what stands after it too), so its accuracy is not its own figure and is not logged
    own: bool = True
    # True: this run is also one of AutoAttack's stages on these points (`attack_groups`)
    autoattack_stage: bool = False

    @property
    def accuracy(self) -> float:
        return share(self.robust)


def share(mask: torch.Tensor) -> float:
    """The fraction of True entries, as an exact count over a count in float64: every figure
    (an attack's accuracy, the worst case, a half) goes through it, so a worst case is never a
    float32 rounding above the attack accuracy it is the minimum of."""
    return int(mask.sum()) / mask.numel()


def eval_indices(n_test: int, size: int, seed: int) -> torch.Tensor:
    """The evaluation subset of the test split (`data.fixed_subset`): the same points for every
    trial of a sweep, and a larger subset with the same seed always contains it."""
    return fixed_subset(n_test, size, seed)


def evaluation_points(cfg: TrialSettings, data: Dataset) -> tuple[torch.Tensor, ...]:
    """(indices into the test split, x, y) of the sweep's evaluation subset, on the data's
    device: what a trial's attacks, its per-epoch check, its per-example record and its logged
    dataset input all mean by "the evaluation points"."""
    e = cfg.evaluation
    idx = eval_indices(len(data.y_test), e.size, e.seed).to(data.y_test.device)
    return idx, data.x_test[idx], data.y_test[idx]


def attack_options(
    name: str, eps: float, settings: SweepSettings, surrogate: nn.Module | None
) -> dict:
    """The keyword options an attack gets: its catalog entry reads them from the settings."""
    attack = ATTACKS[name]
    options = attack.options(settings, eps)
    return {**options, "surrogate": surrogate} if attack.needs_surrogate else options


def check_bounds(name: str, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> None:
    excess = ((x_adv - x).abs().max() - eps).item()
    if excess > BOUND_TOLERANCE or x_adv.min() < 0 or x_adv.max() > 1:
        raise AttackBoundsError(
            f"{name} at eps={eps:g} left the eps-ball or [0, 1] (excess {excess:.3g})"
        )


@torch.no_grad()
def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1) == y


def run_attacks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: tuple[str, ...],
    eps_list: tuple[float, ...],
    settings: SweepSettings,
    surrogate: nn.Module | None = None,
    own: tuple[str, ...] | None = None,
) -> list[AttackResult]:
    """Every attack at every eps on the clean-correct points (a misclassified point is not
    robust whatever an attack does), each output bounds-checked and scored on the float32 model.
    `own`: the attacks whose own figure is wanted at the unbounded eps (the rest run there only
    on the points those left standing: the box's worst case needs no more). At the bounded eps
    every attack's own figure feeds the masking diagnostics. APGD-CE and APGD-T at AutoAttack's
    settings run as AutoAttack's first two stages (`autoattack_stage_points`), so the audit
    reads them instead of running them again."""
    model.eval()
    clean = correct(model, x, y)
    unbounded = settings.evaluation.unbounded_eps
    results = []
    for eps in eps_list:
        wanted = attacks if own is None or eps != unbounded else own
        standing = clean.clone()
        done: dict[str, AttackResult] = {}
        for name in _in_turn(attacks, wanted):
            if name in wanted:
                groups, stage = attack_groups(name, clean, done, settings)
            else:
                groups, stage = [standing.nonzero().flatten()], False
            result = attack_points(model, x, y, name, eps, settings, surrogate, groups)
            result.own, result.autoattack_stage = name in wanted, stage
            standing &= result.robust
            done[name] = result
            results.append(result)
    return results


def _in_turn(attacks: tuple[str, ...], wanted: tuple[str, ...]) -> list[str]:
    """The order attacks run in at one eps: the own figures first, APGD-CE before APGD-T (as in
    AutoAttack), otherwise the spec's order."""
    return sorted(attacks, key=lambda a: (a not in wanted, a == "apgd_t"))


def attack_groups(
    name: str, clean: torch.Tensor, done: dict[str, AttackResult], settings: SweepSettings
) -> tuple[list[torch.Tensor], bool]:
    """(the point sets an attack's own run covers, each in its own batches; whether that run is
    also one of AutoAttack's stages). An attack's own figure needs every clean-correct point.
    At AutoAttack's iterations (`autoattack_stage_points`) APGD-CE on the clean-correct points
    in `attack_batch_size` batches is AutoAttack's first stage, and APGD-T on the points APGD-CE
    left standing, in the same batches, is its second; APGD-T then attacks the points APGD-CE
    broke, for its own figure."""
    everyone = clean.nonzero().flatten()
    if settings.evaluation.apgd_iterations != AUTOATTACK_APGD_ITERATIONS:
        return [everyone], False
    if name == "apgd_ce":
        return [everyone], True
    first = done.get("apgd_ce")
    if name == "apgd_t" and first is not None and first.own and first.autoattack_stage:
        standing = first.robust
        return [standing.nonzero().flatten(), (clean & ~standing).nonzero().flatten()], True
    return [everyone], False


def attack_points(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    name: str,
    eps: float,
    settings: SweepSettings,
    surrogate: nn.Module | None,
    groups: list[torch.Tensor],
) -> AttackResult:
    """One attack at one eps on the points each group indexes, group after group; the result
    says, per point, whether the point is correct and survived (False where it did not run:
    only misclassified or already broken points are left out)."""
    robust = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    options = attack_options(name, eps, settings, surrogate)
    batch = settings.evaluation.attack_batch_size
    seconds = 0.0
    for on in (g for g in groups if len(g)):
        start = time.perf_counter()
        x_adv = attack_in_batches(ATTACKS[name].run, model, x[on], y[on], eps, options, batch)
        seconds += time.perf_counter() - start
        check_bounds(name, x_adv, x[on], eps)
        robust[on] = correct(model, x_adv, y[on])
    return AttackResult(name, eps, robust, seconds)


def attack_in_batches(
    run, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, options: dict, batch: int
) -> torch.Tensor:
    """The attack on at most `batch` points at a time, each batch seeded alike (AutoAttack's
    own batching): the attacks' transient heap grows with the points attacked at once."""
    if len(x) <= batch:
        return run(model, x, y, eps, **options)
    parts = [run(model, x[i : i + batch], y[i : i + batch], eps, **options)
             for i in range(0, len(x), batch)]  # fmt: skip
    return torch.cat(parts)


def worst_case(results: list[AttackResult], eps: float) -> torch.Tensor:
    """Per example: robust only if it survives every attack run at this eps."""
    masks = [r.robust for r in results if r.eps == eps]
    return torch.stack(masks).all(0)


def robustness_curves_data(
    results: list[AttackResult], unbounded_eps: float
) -> tuple[dict[tuple[str, float], float], dict[float, float]]:
    """({(attack, eps): accuracy}, {eps: worst case}) over the bounded budgets: what a trial's
    robustness-curves figure draws."""
    bounded = [r for r in results if r.eps != unbounded_eps]
    accuracy = {(r.attack, r.eps): r.accuracy for r in bounded if r.own}
    worst = {e: share(worst_case(bounded, e)) for e in {r.eps for r in bounded}}
    return accuracy, worst


def worst_case_figures(worst: torch.Tensor, selection: torch.Tensor, eps: float) -> dict:
    """The per-example worst case at eps as figures: on every point with its Wilson interval,
    and on each half (selection and report points)."""
    n, k = len(worst), int(worst.sum())
    low, high = wilson(k, n)
    chosen = worst[selection.to(worst.device)]
    reported = worst[~selection.to(worst.device)]
    return {
        names.worst_case_acc(eps): k / n,
        names.worst_case_bound(eps, "low"): low,
        names.worst_case_bound(eps, "high"): high,
        names.worst_case_on(eps, names.SELECTION): share(chosen),
        names.worst_case_on(eps, names.REPORT): share(reported),
    }


def robustness_metrics(results: list[AttackResult], selection: torch.Tensor) -> dict[str, float]:
    """robust_acc/<attack>/eps_<e>, the worst case's figures per eps, attack_seconds/<attack>,
    and how many points they rest on."""
    metrics: dict[str, float] = {names.EVAL_POINTS: float(len(selection))}
    for r in results:
        if r.own:
            metrics[names.robust_acc(r.attack, r.eps)] = r.accuracy
        key = names.attack_seconds(r.attack)
        metrics[key] = metrics.get(key, 0.0) + r.seconds
    for eps in sorted({r.eps for r in results}):
        metrics |= worst_case_figures(worst_case(results, eps), selection, eps)
    return metrics


def evaluate_robustness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: SweepSettings,
    surrogate: nn.Module | None,
) -> tuple[dict, dict, list[AttackResult]]:
    """The full cheap tier on the final model: (metrics, {diagnostic: (value, flag)}, results)."""
    ecfg = settings.evaluation
    eps_list = (*ecfg.eps, ecfg.unbounded_eps)
    attacks = tuple(
        a for a in ecfg.attacks if not ATTACKS[a].needs_surrogate or surrogate is not None
    )
    at_box = (UNBOUNDED_ATTACK,)  # the box's only own figure a diagnostic reads
    results = run_attacks(model, x, y, attacks, eps_list, settings, surrogate, own=at_box)
    metrics = robustness_metrics(results, selection_points(len(y), ecfg.seed))
    share, collapsed = collapse_check(model, x, y, settings)
    metrics[names.MAJORITY_SHARE], metrics[names.COLLAPSED] = share, float(collapsed)
    diagnostics = diagnose(
        own_accuracies(results),
        zero_gradient_fraction(model, x, y, torch.float32),
        zero_gradient_fraction(model, x, y, torch.float64),
        ecfg,
        transfer_is_black_box=surrogate is not None and surrogate is not model,
        collapsed=collapsed,
    )
    for name, (value, _) in diagnostics.items():
        metrics[names.masking(name)] = value
    return metrics, diagnostics, results


@torch.no_grad()
def collapse_check(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: SweepSettings
) -> tuple[float, bool]:
    """(share of the most predicted class, collapsed). A collapsed model predicts (nearly) one
    class or sits at chance: its "robust" points are that class's share, which no attack can
    lower, so it is neither robust nor a masking suspect, just broken."""
    logits = model(x)
    predictions = logits.argmax(1)
    majority = predictions.bincount().max().item() / len(predictions)
    accuracy = share(predictions == y)
    e = settings.evaluation
    chance = e.collapse_chance_factor / logits.shape[1]
    return majority, majority >= e.collapse_share or accuracy <= chance


def quick_evaluation(cfg: TrialSettings, data: Dataset, model: nn.Module) -> dict:
    """FGSM and PGD-CE on the evaluation subset, for robustness curves over training."""
    e = cfg.evaluation
    _, x, y = evaluation_points(cfg, data)
    results = run_attacks(model, x, y, ("fgsm", "pgd_ce"), tuple(e.eps), cfg)
    return robustness_metrics(results, selection_points(len(y), e.seed))


# ---- per-example results, stored with the trial and joined by the audit ---------------------


def own_accuracies(results: list[AttackResult]) -> dict[tuple[str, float], float]:
    """{(attack, eps): accuracy} of the results that are their attack's own figure: what the
    masking diagnostics compare."""
    return {(r.attack, r.eps): r.accuracy for r in results if r.own}


def _result_json(r: AttackResult) -> dict:
    return {"attack": r.attack, "eps": r.eps, "own": r.own,
            "autoattack_stage": r.autoattack_stage, "robust": r.robust.int().tolist()}  # fmt: skip


def per_example_record(
    indices: torch.Tensor, results: list[AttackResult], clean: torch.Tensor, seed: int
) -> dict:
    """Every attack's result on every evaluation point, each point's clean correctness and its
    purpose (1: a selection point, 0: a report point): what an audit joins, and what comparisons
    and intervals pair point by point (JSON-ready). `own` false: the attack ran only on the
    points still standing (see `AttackResult.own`)."""
    return {
        "eval_indices": indices.tolist(),
        "clean": clean.int().tolist(),
        "selection": selection_points(len(indices), seed).int().tolist(),
        "results": [_result_json(r) for r in results],
    }


def stored_results(record: dict) -> list[AttackResult]:
    """The per-example record's results as AttackResults (CPU, no seconds)."""
    return [
        AttackResult(r["attack"], float(r["eps"]), torch.tensor(r["robust"]).bool(), 0.0,
                     own=r.get("own", True), autoattack_stage=r.get("autoattack_stage", False))
        for r in record["results"]
    ]  # fmt: skip


def merge_audit(stored: list[AttackResult], audit: list[AttackResult]) -> list[AttackResult]:
    """The stored results with the audit's joined in, on the same evaluation points; an
    (attack, eps) the audit ran replaces what the record held of it (a re-audit after a resume)."""
    ran = {(r.attack, r.eps) for r in audit}
    kept = [r for r in stored if (r.attack, r.eps) not in ran]
    return kept + [replace(r, robust=r.robust.cpu()) for r in audit]


def record_with(record: dict, results: list[AttackResult]) -> dict:
    """The per-example record with these results in place of its own (after an audit)."""
    return {**record, "results": [_result_json(r) for r in results]}


def audit_metrics(
    merged: list[AttackResult],
    audit_results: list[AttackResult],
    zero_f32: float,
    zero_f64: float,
    cfg: TrialSettings,
) -> tuple[dict, dict]:
    """(metrics, diagnostics) after an audit: worst case and flags recomputed per example over
    the cheap tier and the audit together; attack seconds only for the audit's own attacks."""
    audited = {r.attack for r in audit_results}
    selection = selection_points(len(merged[0].robust), cfg.evaluation.seed)
    metrics = {
        k: v
        for k, v in robustness_metrics(merged, selection).items()
        if names.parse_attack_seconds(k) in (None, *audited)
    }
    diagnostics = diagnose(
        own_accuracies(merged), zero_f32, zero_f64, cfg.evaluation,
        transfer_is_black_box=cfg.lam != 0,
    )  # fmt: skip
    metrics |= {names.masking(name): value for name, (value, _) in diagnostics.items()}
    return metrics, diagnostics
