"""The sweep report: figures and a summary table on the sweep's parent run, built from the trial
runs' logged metrics (no models), visible in the MLflow UI without downloading anything."""

from __future__ import annotations

from collections import defaultdict

from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from tracking import metric_names as names
from tracking.palette import WORST, colour
from tracking.runs import trial_runs
from tracking.select import (
    DEFAULT_EPS,
    DEFAULT_MIN_CLEAN_ACC,
    RULE,
    SelectionError,
    load_candidates,
    pareto_front,
    select_best,
    verdict,
)
from tracking.sweep_run import latest_sweep_run

NAIVE = "fgsm"


def _evaluated_trial_runs(client: MlflowClient, sweep: str):
    experiment_id, parent = latest_sweep_run(client, sweep)
    runs = trial_runs(client, experiment_id, parent.info.run_id)
    return parent.info.run_id, [r for r in runs if names.CLEAN_ACC in r.data.metrics]


def defence_label(params: dict) -> str:
    """`none`, or the defence kind and its eps (`pgd ε=0.1`): one series per label."""
    kind = params.get("defence", "none")
    return kind if kind == "none" else f"{kind} ε={float(params.get('defence.eps', 'nan')):g}"


def _groups(runs, by_defence: bool = True) -> dict[tuple[str, ...], list]:
    """Runs per (architecture, activation[, defence]), sorted by lambda."""
    groups = defaultdict(list)
    for r in runs:
        p = r.data.params
        key = (p.get("arch.name", "?"), p.get("activation", "?"))
        groups[(*key, defence_label(p)) if by_defence else key].append(r)
    return {
        k: sorted(v, key=lambda r: float(r.data.params["lam"])) for k, v in sorted(groups.items())
    }


def _lam_axis(ax, lams: list[float]) -> None:
    """Symlog λ axis (0 and decades side by side) with ticks at the grid's own values."""
    positive = [x for x in lams if x > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
    ticks = sorted(set(lams))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("λ")


def robustness_vs_lambda(runs, eps: float) -> Figure:
    """Robust accuracy vs λ, every attack, one panel per architecture x activation; the naive
    FGSM and the per-example worst case drawn bold."""
    groups = _groups(runs)
    cols = min(3, len(groups))
    rows = -(-len(groups) // cols)
    fig = Figure(figsize=(5 * cols + 1.5, 4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for unused in axes[len(groups) :]:
        unused.set_visible(False)
    for ax, (key, rs) in zip(axes, groups.items(), strict=False):
        lams = [float(r.data.params["lam"]) for r in rs]
        attacks = sorted(
            {
                parsed[0]
                for r in rs
                for k in r.data.metrics
                if (parsed := names.parse_robust_acc(k)) is not None and parsed[1] == eps
            }
        )
        for attack in attacks:
            ys = [r.data.metrics.get(names.robust_acc(attack, eps)) for r in rs]
            bold = attack == NAIVE
            ax.plot(
                lams,
                ys,
                color=colour(attack),
                marker="o",
                lw=2.5 if bold else 1,
                alpha=1 if bold else 0.6,
                label=attack + (" (naive)" if bold else ""),
            )
        ax.plot(
            lams,
            [r.data.metrics.get(names.worst_case_acc(eps)) for r in rs],
            marker="s",
            color=colour(WORST),
            lw=2.5,
            label=WORST,
        )
        ax.plot(
            lams,
            [r.data.metrics[names.CLEAN_ACC] for r in rs],
            ls="--",
            color="grey",
            label="clean",
        )
        _lam_axis(ax, lams)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{', '.join(key)}; ε = {eps:g}", fontsize=9)
        ax.set_ylabel("accuracy")
    axes[cols - 1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def clean_vs_worst(candidates, eps: float) -> Figure:
    """Clean vs worst-case accuracy, one point per trial (flagged ones hollow), Pareto front."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    points = [c for c in candidates if c.worst is not None]
    for flagged in (False, True):
        group = [c for c in points if c.flagged == flagged]
        ax.scatter(
            [c.clean for c in group],
            [c.worst for c in group],
            facecolors="none" if flagged else "#4c72b0",
            edgecolors="#4c72b0",
            label="masking suspected" if flagged else "no flag",
        )
    front = pareto_front(points)
    ax.plot(
        [c.clean for c in front],
        [c.worst for c in front],
        color="#c44e52",
        lw=1.5,
        label="Pareto front",
    )
    for c in front:
        ax.annotate(
            c.run_name, (c.clean, c.worst), fontsize=6, xytext=(3, 3), textcoords="offset points"
        )
    ax.set_xlabel("clean accuracy")
    ax.set_ylabel(f"worst-case accuracy, ε = {eps:g}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def saturation_vs_lambda(runs) -> Figure:
    """Mean over hidden layers of the saturated fraction (solid) and, where the activation has
    a float32-flat point, of the fraction of units past it (dashed), vs λ."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    all_lams = []
    for (arch, act, defence), rs in _groups(runs).items():
        lams = [float(r.data.params["lam"]) for r in rs]
        all_lams += lams
        for prefix, style in ((names.SATURATION, "-"), (names.SATURATION_FLAT, "--")):
            ys = [_layer_mean(r.data.metrics, prefix) for r in rs]
            if any(y is not None for y in ys):
                ax.plot(
                    lams,
                    ys,
                    ls=style,
                    marker="o",
                    label=f"{arch} {act} {defence}" + (" float32-flat" if "flat" in prefix else ""),
                )
    _lam_axis(ax, all_lams or [1.0])
    ax.set_ylabel("fraction of hidden units")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _layer_mean(metrics: dict, prefix: str) -> float | None:
    values = names.layer_values(metrics, prefix)
    return sum(values) / len(values) if values else None


def defence_comparison(runs, eps: float) -> Figure:
    """The paper's question at a glance: worst-case accuracy at eps (solid) and naive FGSM
    (dashed) against λ, one colour per defence, one panel per architecture x activation."""
    groups = _groups(runs, by_defence=False)
    labels = sorted({defence_label(r.data.params) for r in runs})
    fig = Figure(figsize=(5.5 * len(groups) + 1.5, 4.2))
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, ((arch, act), rs) in zip(axes, groups.items(), strict=True):
        for label in labels:
            mine = [r for r in rs if defence_label(r.data.params) == label]
            if not mine:
                continue
            lams = [float(r.data.params["lam"]) for r in mine]
            worst = [r.data.metrics.get(names.worst_case_acc(eps)) for r in mine]
            fgsm = [r.data.metrics.get(names.robust_acc(NAIVE, eps)) for r in mine]
            ax.plot(lams, worst, color=colour(label), marker="s", lw=2, label=f"{label}: worst")
            ax.plot(lams, fgsm, color=colour(label), ls="--", marker="o", lw=1, alpha=0.7,
                    label=f"{label}: FGSM")  # fmt: skip
        _lam_axis(ax, [float(r.data.params["lam"]) for r in rs])
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{arch}, {act}: accuracy at ε = {eps:g}", fontsize=9)
        ax.set_ylabel("accuracy")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def worst_case_curves(runs, candidates, eps: float) -> Figure:
    """Worst-case accuracy against eps of the best trial (by worst case at `eps`, collapsed
    trials left out) of each (defence, activation): colour per defence, style per activation."""
    usable = {c.run_id for c in candidates if not c.collapsed and c.worst is not None}
    best: dict[tuple[str, str], object] = {}
    for r in runs:
        if r.info.run_id not in usable:
            continue
        key = (defence_label(r.data.params), r.data.params.get("activation", "?"))
        score = r.data.metrics.get(names.worst_case_acc(eps), -1)
        if key not in best or score > best[key].data.metrics.get(names.worst_case_acc(eps), -1):
            best[key] = r
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    styles = ["-", "--", ":", "-."]
    activations = sorted({k[1] for k in best})
    for (defence, act), r in sorted(best.items()):
        points = sorted((e, v) for k, v in r.data.metrics.items()
                        if (e := names.parse_worst_case_acc(k)) is not None and e < 1)  # fmt: skip
        ax.plot(*zip(*points, strict=True), marker="s", lw=2, color=colour(defence),
                ls=styles[activations.index(act) % 4],
                label=f"{defence}, {act} (λ={float(r.data.params['lam']):g})")  # fmt: skip
    ax.set_xlabel("ε (L∞)")
    ax.set_ylabel("worst-case accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("best trial per (defence, activation)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def _eps_values(runs) -> list[float]:
    return sorted(
        {e for r in runs for k in r.data.metrics if (e := names.parse_worst_case_acc(k)) and e < 1}
    )


def defence_table(runs, candidates, eps: float) -> list[str]:
    """Markdown rows per (activation, defence, λ): clean, naive FGSM, worst case per eps,
    whether audited, and the training cost per epoch as a ratio to `none` with the same
    architecture, activation and λ."""
    by_id = {c.run_id: c for c in candidates}
    eps_list = _eps_values(runs)
    cost = {}
    for r in runs:
        p = r.data.params
        cost[(p.get("arch.name"), p.get("activation"), p.get("lam"), defence_label(p))] = (
            r.data.metrics.get(names.SECONDS_PER_EPOCH)
        )
    header = ["architecture", "activation", "defence", "λ", "clean", f"FGSM ε={eps:g}"]
    header += [f"worst ε={e:g}" for e in eps_list] + ["audited", "s/epoch", "cost vs none", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = sorted(runs, key=lambda r: (r.data.params.get("arch.name"), r.data.params.get(
        "activation"), defence_label(r.data.params), float(r.data.params["lam"])))  # fmt: skip
    for r in rows:
        p, m, c = r.data.params, r.data.metrics, by_id.get(r.info.run_id)
        key = (p.get("arch.name"), p.get("activation"), p.get("lam"))
        seconds, base = cost.get((*key, defence_label(p))), cost.get((*key, "none"))
        ratio = f"{seconds / base:.1f}×" if seconds and base else "–"
        note = "collapsed" if c and c.collapsed else ", ".join(c.flags) if c and c.flags else ""
        cells = [p.get("arch.name", "?"), p.get("activation", "?"), defence_label(p),
                 f"{float(p['lam']):g}", _fmt(m.get(names.CLEAN_ACC)),
                 _fmt(m.get(names.robust_acc(NAIVE, eps)))]  # fmt: skip
        cells += [_fmt(m.get(names.worst_case_acc(e))) for e in eps_list]
        cells += ["yes" if c and c.audited else "no", _fmt(seconds, 2), ratio, note or "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def summary_markdown(candidates, eps: float, min_clean_acc: float, runs=()) -> str:
    rows = sorted(candidates, key=lambda c: (c.arch, c.activation, c.defence, c.lam))
    try:
        champion = select_best(candidates, min_clean_acc, include_flagged=False).run_id
    except SelectionError:
        champion = None
    lines = [
        f"# Sweep summary (ε = {eps:g})",
        "",
        "| run | λ | defence | activation | clean | FGSM | worst case | flags | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        why = verdict(c, min_clean_acc, include_flagged=False)[1]
        name = f"**{c.run_name}** (champion)" if c.run_id == champion else c.run_name
        lines.append(
            f"| {name} | {c.lam:g} | {c.defence} | {c.activation} | {_fmt(c.clean)} | "
            f"{_fmt(c.fgsm)} | {_fmt(c.worst)} | {', '.join(c.flags) or '–'} | {why} |"
        )
    lines += [
        "",
        f"Rule: {RULE} (min_clean_acc {min_clean_acc:g}, eps {eps:g}). Worst case is per example "
        "over every attack run on the point; audited trials include Square and AutoAttack.",
    ]
    if runs and len({defence_label(r.data.params) for r in runs}) > 1:
        lines += ["", "## Defences compared", ""] + defence_table(runs, candidates, eps)
        lines += [
            "",
            "`s/epoch` is the mean wall-clock training time per epoch (attack crafting "
            "included); `cost vs none` divides it by the undefended trial with the same "
            "architecture, activation and λ.",
        ]
    return "\n".join(lines) + "\n"


def write_report(
    tracking_uri: str,
    sweep: str,
    eps: float = DEFAULT_EPS,
    min_clean_acc: float = DEFAULT_MIN_CLEAN_ACC,
) -> list[str]:
    """Log the report's figures and summary to the sweep's parent run; returns their paths."""
    client = MlflowClient(tracking_uri)
    parent, runs = _evaluated_trial_runs(client, sweep)
    if not runs:
        raise SelectionError(f"sweep {sweep!r} has no evaluated trial yet: nothing to report")
    _, candidates = load_candidates(client, sweep, eps)
    artifacts = {
        "report/robustness_vs_lambda.png": robustness_vs_lambda(runs, eps),
        "report/clean_vs_worst_case.png": clean_vs_worst(candidates, eps),
        "report/saturation_vs_lambda.png": saturation_vs_lambda(runs),
        "report/worst_case_curves.png": worst_case_curves(runs, candidates, eps),
    }
    if len({defence_label(r.data.params) for r in runs}) > 1:
        artifacts["report/defence_comparison.png"] = defence_comparison(runs, eps)
    for path, fig in artifacts.items():
        client.log_figure(parent, fig, path)
    summary = summary_markdown(candidates, eps, min_clean_acc, runs)
    client.log_text(parent, summary, "report/summary.md")
    return [*artifacts, "report/summary.md"]
