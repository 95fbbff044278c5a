"""The metric-name schema: how a trial's numbers are named in MLflow, built and parsed here only.

Trials (`trainables`) write these names and selection, the report and the audit (`tracking`,
`sweeps`) read them; both import this module, which imports nothing of theirs, so the one-way
rule `sweeps -> trainables -> tracking` holds.
"""

from __future__ import annotations

CLEAN_ACC = "clean_acc"
EPOCH = "epoch"
# The summary figures have no prefix (clean_acc, the flags) or their own (worst_case_acc/), so
# MLflow's charts show them first; training, timings and diagnostics sit under prefixes.
# training, per epoch (trainables/train.py)
LOSS = "train/loss"
CROSS_ENTROPY = "train/cross_entropy"  # the data term: CE on the inputs trained on (+ TRADES KL)
PENALTY = "train/penalty"
EFFECTIVE_LAMBDA = "train/effective_lambda"
TRAIN_ACC = "train/acc"  # running accuracy on the inputs trained on (adversarial under a defence)
DEFENCE_EPS = "train/defence_eps"  # the training attack's eps in force (a warm-up ramps it)
KEPT_EPOCH = "train/kept_epoch"  # keep_best: the epoch whose weights the trial ended with
DIVERGED_AT_EPOCH = "diverged_at_epoch"
TRIAL_ID = "trial_id"  # Ray adds it to every reported result
MASKING_SUSPECTED = "masking_suspected"
MAJORITY_SHARE = "diagnostics/prediction_majority_share"  # share of the most predicted class
COLLAPSED = "collapsed"  # 1.0: constant or chance-level classifier
CATASTROPHIC_OVERFITTING = "catastrophic_overfitting"
FLAGS_REPORT = "flags"  # in Tune's last report only (text): the raised masking flags
TRAIN_SECONDS = "timing/train_seconds"  # this epoch's training, wall clock
SECONDS_PER_EPOCH = "timing/train_seconds_per_epoch"  # mean over the epochs trained so far
EARLY_STOPPING = "early_stopping/eval_pgd_acc"  # per epoch where ASHA ranks by it
OVERFITTING = "overfitting/train_pgd_acc"  # per epoch under a defence: the overfitting watch
OVERFITTING_SINGLE_STEP = "overfitting/train_fgsm_acc"  # the same batch under FGSM
NEVER_ROBUST = "never_robust"  # last epoch: 1.0 when the watch's PGD accuracy never rose
EPOCHS_RUN = "train/epochs_run"  # epochs this trial trained, retrained ones after a restore too
TWIN_EPOCHS_TRAINED = "train/twin_epochs_trained"  # training the lambda = 0 twin (0: reused)
TWIN_WAIT_SECONDS = "timing/twin_wait_seconds"  # waiting for the twin trial to log its weights
# the trial's worker process (trainables/worker_memory.py), logged when the trial ends
WORKER_TRIALS_RUN = "worker/trials_run"  # trials this process has run, this one included
WORKER_PEAK_MB = "worker/peak_resident_mb"  # resident peak during this trial
WORKER_RESIDENT_MB = "worker/resident_mb"  # at the trial's end, after freed memory went back
WORKER_PRIVATE_MB = "worker/private_mb"  # anonymous (heap, tensors) at the trial's end
# the sweep run's cost accounting (sweeps/costs.py): each launch's own, and the sweep's so far
SWEEP_LAUNCH_WALL = "sweep/launch_wall_seconds"  # this launch, from Ray's start to its end
SWEEP_LAUNCH_BUSY = "sweep/launch_busy_seconds"  # its trial attempts and audit tasks
SWEEP_WALL = "sweep/wall_seconds"  # summed over launches: the time between them is not in it
SWEEP_BUSY = "sweep/busy_seconds"
SWEEP_SLOTS = "sweep/slots"
SWEEP_UTILISATION = "sweep/slot_utilisation"  # busy / (slots x wall), over the launches so far
SWEEP_EPOCHS_RUN = "sweep/training_epochs_run"  # every trial's, retrained epochs and twins too
SWEEP_GRID_EPOCHS = "sweep/grid_epochs"
SWEEP_EPOCHS_RATIO = "sweep/training_epochs_ratio"
# where the trials' compute went, summed over the record's trials (sweeps/costs.compute_split)
SWEEP_TRAIN_SECONDS = "sweep/train_seconds"  # training, twins included
SWEEP_CHEAP_SECONDS = "sweep/cheap_attack_seconds"  # every trial's cheap attack tier
SWEEP_AUDIT_SECONDS = "sweep/audit_attack_seconds"  # the audited trials' Square and AutoAttack
SWEEP_AUDIT_SHARE = "sweep/audit_share"  # audit over all three
# each masking diagnostic's threshold: a field of the spec's `evaluation.masking` (logged as the
# param `evaluation.masking.<field>`); a diagnostic is flagged when its value exceeds it
MASKING_THRESHOLDS = {
    "zero_grad_float32": "zero_grad_threshold",
    "zero_grad_float64": "zero_grad_threshold",
    "stabilisation_gap": "gap_threshold",
    "single_step_beats_iterative": "tolerance",
    "blackbox_beats_whitebox": "tolerance",
    "eps_non_monotone": "tolerance",
    "unbounded_failure": "unbounded_threshold",
}
_MASKING = "masking/"
_MASKING_TAG = "masking."
_ROBUST = "robust_acc/"
_WORST = "worst_case_acc/"
_SECONDS = "attack_seconds/"
_STAGE_SECONDS = "autoattack_seconds/"  # one per AutoAttack stage the audit ran itself
SATURATION = "saturation/"
SATURATION_FLAT = "saturation_float32_flat/"
WEIGHT_KURTOSIS = "weight_kurtosis/"


# the summary again, under one prefix MLflow's chart view shows first (it sorts its sections by
# prefix, letters without regard to case, and puts unprefixed metrics last; a leading
# underscore sorts before every letter)
SUMMARY = "_summary/"
SUMMARY_FLAGS = (MASKING_SUSPECTED, COLLAPSED, CATASTROPHIC_OVERFITTING, NEVER_ROBUST)


def summary_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """`_summary/clean_acc`, `_summary/worst_case_eps_<e>` per budget and the flags, copied from a
    trial's final (or audited) metrics; what is absent there is left out."""
    out = {f"{SUMMARY}{CLEAN_ACC}": metrics[CLEAN_ACC]} if CLEAN_ACC in metrics else {}
    for key, value in metrics.items():
        eps = parse_worst_case_acc(key)
        if eps is not None and key == worst_case_acc(eps):
            out[f"{SUMMARY}worst_case_{eps_key(eps)}"] = value
    for flag in SUMMARY_FLAGS:
        value = metrics.get(flag, metrics.get(masking(flag)))
        if value is not None:
            out[f"{SUMMARY}{flag}"] = value
    return out


def eps_key(eps: float) -> str:
    """`eps_0.1`: the budget as it appears in metric names."""
    return f"eps_{eps:g}"


def robust_acc(attack: str, eps: float) -> str:
    return f"{_ROBUST}{attack}/{eps_key(eps)}"


def worst_case_acc(eps: float) -> str:
    return f"{_WORST}{eps_key(eps)}"


# the evidence each figure carries (tracking/evidence.py): its 95 % interval, how many points it
# rests on, and, for the worst case, its value on each half of the evaluation points (the
# selection points choose, the report points report the chosen one's figure)
SELECTION, REPORT = "selection", "report"
EVAL_POINTS = "points/eval"  # the evaluation subset the attacks ran on
CLEAN_POINTS = "points/clean"  # the test split clean_acc is measured on
CLEAN_LOW, CLEAN_HIGH = "clean_acc/ci_low", "clean_acc/ci_high"


def worst_case_bound(eps: float, side: str) -> str:
    """`worst_case_acc/eps_0.1/ci_low` (side `low`) or `.../ci_high`: Wilson, 95 %."""
    return f"{worst_case_acc(eps)}/ci_{side}"


def worst_case_on(eps: float, half: str) -> str:
    """`worst_case_acc/eps_0.1/selection_points` or `.../report_points`."""
    return f"{worst_case_acc(eps)}/{half}_points"


def attack_seconds(attack: str) -> str:
    return f"{_SECONDS}{attack}"


def autoattack_stage_seconds(stage: str) -> str:
    return f"{_STAGE_SECONDS}{stage}"


def masking(diagnostic: str) -> str:
    """Metric holding a masking diagnostic's value (`masking/<name>`)."""
    return f"{_MASKING}{diagnostic}"


def masking_threshold_param(diagnostic: str) -> str:
    """The param holding the threshold a diagnostic's flag is decided by."""
    return f"evaluation.masking.{MASKING_THRESHOLDS[diagnostic]}"


def masking_tag(diagnostic: str) -> str:
    """Tag holding a masking diagnostic's flag (`masking.<name>` = true/false)."""
    return f"{_MASKING_TAG}{diagnostic}"


def saturation(layer: int) -> str:
    return f"{SATURATION}layer{layer}"


def saturation_flat(layer: int) -> str:
    return f"{SATURATION_FLAT}layer{layer}"


def weight_kurtosis(layer_name: str) -> str:
    return f"{WEIGHT_KURTOSIS}{layer_name}"


def _parse_eps(key: str) -> float | None:
    if not key.startswith("eps_"):
        return None
    try:
        return float(key[len("eps_") :])
    except ValueError:
        return None


def parse_robust_acc(name: str) -> tuple[str, float] | None:
    """(attack, eps) of a `robust_acc/<attack>/eps_<e>` name, else None."""
    if not name.startswith(_ROBUST):
        return None
    attack, _, rest = name[len(_ROBUST) :].partition("/")
    eps = _parse_eps(rest)
    return None if eps is None else (attack, eps)


def parse_worst_case_acc(name: str) -> float | None:
    """eps of a `worst_case_acc/eps_<e>` name, else None."""
    return _parse_eps(name[len(_WORST) :]) if name.startswith(_WORST) else None


def parse_attack_seconds(name: str) -> str | None:
    return name[len(_SECONDS) :] if name.startswith(_SECONDS) else None


def flags_from_tags(tags: dict[str, str]) -> list[str]:
    """Names of the masking diagnostics whose flag tag is 'true', sorted."""
    return sorted(
        k[len(_MASKING_TAG) :]
        for k, v in tags.items()
        if k.startswith(_MASKING_TAG) and v == "true"
    )


def layer_values(metrics: dict[str, float], prefix: str) -> list[float]:
    """Every per-layer value under a prefix such as SATURATION."""
    return [v for k, v in metrics.items() if k.startswith(prefix)]
