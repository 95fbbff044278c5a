"""The sweep report: figures and a summary table on the sweep's parent run, built from the sweep's
record (`tracking.record`: no models, no second read of the store), visible in the MLflow UI
without downloading anything."""

from __future__ import annotations

from collections import defaultdict

from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from tracking import metric_names as names
from tracking.palette import WORST, colour
from tracking.record import SweepRecord, TrialRecord
from tracking.select import (
    RULE,
    SelectionError,
    SelectionRule,
    champion_or_none,
    pareto_front,
    verdict,
)

NAIVE = "fgsm"


def defence_label(t: TrialRecord) -> str:
    """`none`, or the defence kind and its eps (`pgd ε=0.1`): one series per label."""
    kind = t.defence
    return kind if kind == "none" else f"{kind} ε={float(t.params.get('defence.eps', 'nan')):g}"


def _groups(trials, by_defence: bool = True) -> dict[tuple[str, ...], list[TrialRecord]]:
    """Trials per (architecture, activation[, defence]), sorted by lambda."""
    groups = defaultdict(list)
    for t in trials:
        key = (t.arch, t.activation)
        groups[(*key, defence_label(t)) if by_defence else key].append(t)
    return {k: sorted(v, key=lambda t: t.lam) for k, v in sorted(groups.items())}


def _lam_axis(ax, lams: list[float]) -> None:
    """Symlog λ axis (0 and decades side by side) with ticks at the grid's own values."""
    positive = [x for x in lams if x > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
    ticks = sorted(set(lams))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("λ")


def _attacks_at(trials, eps: float) -> list[str]:
    return sorted(
        {
            parsed[0]
            for t in trials
            for k in t.metrics
            if (parsed := names.parse_robust_acc(k)) is not None and parsed[1] == eps
        }
    )


def robustness_vs_lambda(trials, eps: float) -> Figure:
    """Robust accuracy vs λ, every attack, one panel per architecture x activation x defence;
    the naive FGSM and the per-example worst case drawn bold."""
    groups = _groups(trials)
    cols = min(3, len(groups))
    rows = -(-len(groups) // cols)
    fig = Figure(figsize=(5 * cols + 1.5, 4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for unused in axes[len(groups) :]:
        unused.set_visible(False)
    for ax, (key, ts) in zip(axes, groups.items(), strict=False):
        lams = [t.lam for t in ts]
        for attack in _attacks_at(ts, eps):
            bold = attack == NAIVE
            ax.plot(lams, [t.metrics.get(names.robust_acc(attack, eps)) for t in ts],
                    color=colour(attack), marker="o", lw=2.5 if bold else 1,
                    alpha=1 if bold else 0.6,
                    label=attack + (" (naive)" if bold else ""))  # fmt: skip
        ax.plot(lams, [t.worst(eps) for t in ts], marker="s", color=colour(WORST), lw=2.5,
                label=WORST)  # fmt: skip
        ax.plot(lams, [t.clean for t in ts], ls="--", color="grey", label="clean")
        _lam_axis(ax, lams)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{', '.join(key)}; ε = {eps:g}", fontsize=9)
        ax.set_ylabel("accuracy")
    axes[cols - 1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def clean_vs_worst(trials, eps: float) -> Figure:
    """Clean vs worst-case accuracy, one point per trial (flagged ones hollow), Pareto front."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    points = [t for t in trials if t.worst(eps) is not None]
    for flagged in (False, True):
        group = [t for t in points if t.flagged == flagged]
        ax.scatter([t.clean for t in group], [t.worst(eps) for t in group],
                   facecolors="none" if flagged else "#4c72b0", edgecolors="#4c72b0",
                   label="masking suspected" if flagged else "no flag")  # fmt: skip
    front = pareto_front(points, eps)
    ax.plot([t.clean for t in front], [t.worst(eps) for t in front], color="#c44e52", lw=1.5,
            label="Pareto front")  # fmt: skip
    for t in front:
        ax.annotate(t.name, (t.clean, t.worst(eps)), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    ax.set_xlabel("clean accuracy")
    ax.set_ylabel(f"worst-case accuracy, ε = {eps:g}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def saturation_vs_lambda(trials) -> Figure:
    """Mean over hidden layers of the saturated fraction (solid) and, where the activation has
    a float32-flat point, of the fraction of units past it (dashed), vs λ."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    all_lams = []
    for (arch, act, defence), ts in _groups(trials).items():
        lams = [t.lam for t in ts]
        all_lams += lams
        for prefix, style in ((names.SATURATION, "-"), (names.SATURATION_FLAT, "--")):
            ys = [_layer_mean(t.metrics, prefix) for t in ts]
            if any(y is not None for y in ys):
                ax.plot(lams, ys, ls=style, marker="o",
                        label=f"{arch} {act} {defence}" + (" float32-flat" if "flat" in prefix
                                                           else ""))  # fmt: skip
    _lam_axis(ax, all_lams or [1.0])
    ax.set_ylabel("fraction of hidden units")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _layer_mean(metrics: dict, prefix: str) -> float | None:
    values = names.layer_values(metrics, prefix)
    return sum(values) / len(values) if values else None


def defence_comparison(trials, eps: float) -> Figure:
    """The paper's question at a glance: worst-case accuracy at eps (solid) and naive FGSM
    (dashed) against λ, one colour per defence, one panel per architecture x activation."""
    groups = _groups(trials, by_defence=False)
    labels = sorted({defence_label(t) for t in trials})
    fig = Figure(figsize=(5.5 * len(groups) + 1.5, 4.2))
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, ((arch, act), ts) in zip(axes, groups.items(), strict=True):
        for label in labels:
            mine = [t for t in ts if defence_label(t) == label]
            if not mine:
                continue
            lams = [t.lam for t in mine]
            ax.plot(lams, [t.worst(eps) for t in mine], color=colour(label), marker="s", lw=2,
                    label=f"{label}: worst")  # fmt: skip
            ax.plot(lams, [t.fgsm(eps) for t in mine], color=colour(label), ls="--", marker="o",
                    lw=1, alpha=0.7, label=f"{label}: FGSM")  # fmt: skip
        _lam_axis(ax, [t.lam for t in ts])
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{arch}, {act}: accuracy at ε = {eps:g}", fontsize=9)
        ax.set_ylabel("accuracy")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def worst_case_curves(trials, eps: float) -> Figure:
    """Worst-case accuracy against eps of the best trial (by worst case at `eps`, collapsed
    trials left out) of each (defence, activation): colour per defence, style per activation."""
    best: dict[tuple[str, str], TrialRecord] = {}
    for t in trials:
        if t.collapsed or t.worst(eps) is None:
            continue
        key = (defence_label(t), t.activation)
        if key not in best or t.worst(eps) > best[key].worst(eps):
            best[key] = t
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    styles = ["-", "--", ":", "-."]
    activations = sorted({k[1] for k in best})
    for (defence, act), t in sorted(best.items()):
        points = sorted((e, v) for e, v in t.worst_curve.items() if e != t.unbounded_eps)
        ax.plot(*zip(*points, strict=True), marker="s", lw=2, color=colour(defence),
                ls=styles[activations.index(act) % 4],
                label=f"{defence}, {act} (λ={t.lam:g})")  # fmt: skip
    ax.set_xlabel("ε (L∞)")
    ax.set_ylabel("worst-case accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("best trial per (defence, activation)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def defence_table(record: SweepRecord, eps: float) -> list[str]:
    """Markdown rows per (activation, defence, λ): clean, naive FGSM, worst case per eps,
    whether audited, and the training cost per epoch as a ratio to `none` with the same
    architecture, activation and λ."""
    trials = record.evaluated()
    eps_list = record.evaluated_eps()
    cost = {(t.arch, t.activation, t.lam, defence_label(t)): t.metrics.get(names.SECONDS_PER_EPOCH)
            for t in trials}  # fmt: skip
    header = ["architecture", "activation", "defence", "λ", "clean", f"FGSM ε={eps:g}"]
    header += [f"worst ε={e:g}" for e in eps_list] + ["audited", "s/epoch", "cost vs none", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in sorted(trials, key=lambda t: (t.arch, t.activation, defence_label(t), t.lam)):
        seconds = cost.get((t.arch, t.activation, t.lam, defence_label(t)))
        base = cost.get((t.arch, t.activation, t.lam, "none"))
        ratio = f"{seconds / base:.1f}×" if seconds and base else "–"
        note = "collapsed" if t.collapsed else ", ".join(t.flags)
        cells = [t.arch, t.activation, defence_label(t), f"{t.lam:g}", _fmt(t.clean),
                 _fmt(t.fgsm(eps))]  # fmt: skip
        cells += [_fmt(t.worst(e)) for e in eps_list]
        cells += ["yes" if t.audited else "no", _fmt(seconds, 2), ratio, note or "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def several_defences(record: SweepRecord) -> bool:
    return len({defence_label(t) for t in record.evaluated()}) > 1


def summary_markdown(record: SweepRecord, rule: SelectionRule) -> str:
    trials = list(record.trials.values())
    champion = champion_or_none(trials, rule)
    lines = [
        f"# Sweep summary (ε = {rule.eps:g})",
        "",
        "| run | λ | defence | activation | clean | FGSM | worst case | flags | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in sorted(trials, key=lambda t: (t.arch, t.activation, t.defence, t.lam)):
        why = verdict(t, rule)[1]
        name = f"**{t.name}** (champion)" if champion and t.run_id == champion.run_id else t.name
        lines.append(
            f"| {name} | {t.lam:g} | {t.defence} | {t.activation} | {_fmt(t.clean)} | "
            f"{_fmt(t.fgsm(rule.eps))} | {_fmt(t.worst(rule.eps))} | "
            f"{', '.join(t.flags) or '–'} | {why} |"
        )
    lines += [
        "",
        f"Rule: {RULE} (min_clean_acc {rule.min_clean_acc:g}, eps {rule.eps:g}). Worst case is "
        "per example over every attack run on the point; audited trials include Square and "
        "AutoAttack.",
    ]
    if several_defences(record):
        lines += ["", "## Defences compared", ""] + defence_table(record, rule.eps)
        lines += [
            "",
            "`s/epoch` is the mean wall-clock training time per epoch (attack crafting "
            "included); `cost vs none` divides it by the undefended trial with the same "
            "architecture, activation and λ.",
        ]
    return "\n".join(lines) + "\n"


def write_report(client: MlflowClient, record: SweepRecord, rule: SelectionRule) -> list[str]:
    """Log the report's figures and summary to the sweep's parent run; returns their paths."""
    trials = record.evaluated()
    if not trials:
        raise SelectionError(f"sweep {record.name!r} has no evaluated trial yet: nothing to report")
    eps = rule.eps
    artifacts = {
        "report/robustness_vs_lambda.png": robustness_vs_lambda(trials, eps),
        "report/clean_vs_worst_case.png": clean_vs_worst(trials, eps),
        "report/saturation_vs_lambda.png": saturation_vs_lambda(trials),
        "report/worst_case_curves.png": worst_case_curves(trials, eps),
    }
    if several_defences(record):
        artifacts["report/defence_comparison.png"] = defence_comparison(trials, eps)
    for path, fig in artifacts.items():
        client.log_figure(record.parent_run_id, fig, path)
    client.log_text(record.parent_run_id, summary_markdown(record, rule), "report/summary.md")
    return [*artifacts, "report/summary.md"]
