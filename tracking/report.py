"""The sweep report: figures and a summary on the sweep's parent run, built from the sweep's record
(`tracking.record`: no models, no second read of the store) and, for the paired comparisons,
the trials' per-example results; visible in the MLflow UI without downloading anything.

Every figure is a configuration's (trials that differ only in their seed: the mean over seeds)
with its 95 % interval (error bars); the summary says how sure each answer is: intervals,
comparisons with each baseline (Holm-adjusted), the smallest difference the sweep could detect,
and the champion's figure on the points that took no part in choosing it.
"""

from __future__ import annotations

import math
from collections import defaultdict

from matplotlib import colormaps
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from tracking import metric_names as names
from tracking.compare import ReportComparisons, baseline_comparisons
from tracking.evidence import shown
from tracking.palette import WORST, colour
from tracking.record import Configuration, SweepRecord
from tracking.rules import Baselines
from tracking.run_notes import annotate_runs
from tracking.select import (
    RULE,
    SelectionError,
    SelectionRule,
    champion_or_none,
    configuration_verdict,
    pareto_front,
)

NAIVE = "fgsm"
# MLflow's UI shows an artifact image about 800 px wide: a figure wider than UI_WIDTH_IN inches
# is shrunk, so panels wrap at PANEL_COLUMNS and legend text grows with the figure's width
UI_WIDTH_IN = 8.0
PANEL_COLUMNS = 2
LEGEND = {"fontsize": 10, "frameon": False}


def legend_style(fig: Figure) -> dict:
    """LEGEND, with text that stays about 10 pt once the UI shrinks the figure to its width."""
    width = fig.get_size_inches()[0]
    return LEGEND | {"fontsize": LEGEND["fontsize"] * max(1.0, width / UI_WIDTH_IN)}


def panels(count: int, width: float = 4.8, height: float = 3.8) -> tuple[Figure, list]:
    """A figure of `count` panels, PANEL_COLUMNS to a row, with room for a legend at the right;
    the unused cells hidden."""
    cols = min(PANEL_COLUMNS, count)
    rows = -(-count // cols)
    fig = Figure(figsize=(width * cols + 2.8, height * rows))
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for unused in axes[count:]:
        unused.set_visible(False)
    return fig, list(axes[:count])


def defence_label(c: Configuration) -> str:
    """`none`, or the defence kind and its eps (`pgd ε=0.1`): one series per label."""
    t = c.trials[0]
    kind = t.defence
    return kind if kind == "none" else f"{kind} ε={float(t.params.get('defence.eps', 'nan')):g}"


def series_colours(keys) -> dict:
    """A distinct colour for each series of one figure (tab10, then tab20)."""
    keys = list(dict.fromkeys(keys))
    palette = colormaps["tab10" if len(keys) <= 10 else "tab20"]
    return {k: palette(i % palette.N) for i, k in enumerate(keys)}


def _groups(configs, by_defence: bool = True) -> dict[tuple[str, ...], list[Configuration]]:
    """Configurations per (architecture, activation[, defence]), sorted by lambda."""
    groups = defaultdict(list)
    for c in configs:
        t = c.trials[0]
        key = (t.arch, t.activation)
        groups[(*key, defence_label(c)) if by_defence else key].append(c)
    return {k: sorted(v, key=lambda c: c.trials[0].lam) for k, v in sorted(groups.items())}


def _lams(cs) -> list[float]:
    return [c.trials[0].lam for c in cs]


def _lam_axis(ax, lams: list[float]) -> None:
    """Symlog λ axis (0 and decades side by side) with ticks at the grid's own values."""
    positive = [x for x in lams if x > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
    ticks = sorted(set(lams))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("λ")


def _error_bars(cs, value, bounds) -> tuple[list, list]:
    """(values, [[below...], [above...]]) for matplotlib's errorbar, 0 where a bound is missing."""
    values = [value(c) for c in cs]
    cis = [bounds(c) for c in cs]
    below = [v - ci[0] if ci and v is not None else 0.0 for v, ci in zip(values, cis, strict=True)]
    above = [ci[1] - v if ci and v is not None else 0.0 for v, ci in zip(values, cis, strict=True)]
    return values, [below, above]


def _attacks_at(configs, eps: float) -> list[str]:
    found = set()
    for c in configs:
        for t in c.trials:
            for k in t.metrics:
                parsed = names.parse_robust_acc(k)
                if parsed is not None and parsed[1] == eps:
                    found.add(parsed[0])
    return sorted(found)


def robustness_vs_lambda(configs, eps: float) -> Figure:
    """Robust accuracy vs λ, every attack, one panel per architecture x activation x defence;
    the naive FGSM and the per-example worst case (with its 95 % interval) drawn bold."""
    groups = _groups(configs)
    fig, axes = panels(len(groups))
    for ax, (key, cs) in zip(axes, groups.items(), strict=True):
        lams = _lams(cs)
        for attack in _attacks_at(cs, eps):
            bold = attack == NAIVE
            ys = [c.mean(lambda t, a=attack: t.metrics.get(names.robust_acc(a, eps))) for c in cs]
            label = attack + (" (naive)" if bold else "")
            ax.plot(lams, ys, color=colour(attack), marker="o", lw=2.5 if bold else 1,
                    alpha=1 if bold else 0.6, label=label)  # fmt: skip
        ys, err = _error_bars(cs, lambda c: c.worst(eps), lambda c: c.worst_interval(eps))
        ax.errorbar(lams, ys, yerr=err, marker="s", color=colour(WORST), lw=2.5, capsize=3,
                    label=f"{WORST} (95 % CI)")  # fmt: skip
        ax.plot(lams, [c.clean for c in cs], ls="--", color="grey", label="clean")
        _lam_axis(ax, lams)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{', '.join(key)}; ε = {eps:g}", fontsize=10)
        ax.set_ylabel("accuracy")
    axes[min(PANEL_COLUMNS, len(axes)) - 1].legend(loc="upper left", bbox_to_anchor=(1, 1),
                                                   **legend_style(fig))  # fmt: skip
    fig.tight_layout()
    return fig


def clean_vs_worst(configs, trials, eps: float) -> Figure:
    """Clean vs worst-case accuracy, one point per configuration with both intervals (flagged
    ones hollow), and the Pareto front."""
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    points = [c for c in configs if c.worst(eps) is not None]
    for flagged in (False, True):
        group = [c for c in points if c.flagged == flagged]
        if not group:
            continue
        ys, yerr = _error_bars(group, lambda c: c.worst(eps), lambda c: c.worst_interval(eps))
        xs, xerr = _error_bars(group, lambda c: c.clean, lambda c: c.clean_interval())
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="o", ms=6, capsize=2, color="#4c72b0",
                    mfc="none" if flagged else "#4c72b0", elinewidth=0.8,
                    label="masking suspected" if flagged else "no flag")  # fmt: skip
    front = sorted(pareto_front(trials, eps), key=lambda c: c.clean)
    ax.plot([c.clean for c in front], [c.worst(eps) for c in front], color="#c44e52", lw=1.5,
            marker="D", ms=4, label="Pareto front")  # fmt: skip
    for number, c in enumerate(front, 1):  # numbered: a search's names are too long to place
        ax.annotate(str(number), (c.clean, c.worst(eps)), fontsize=8, xytext=(4, 4),
                    textcoords="offset points", color="#c44e52")  # fmt: skip
    ax.set_xlabel("clean accuracy (95 % CI)")
    ax.set_ylabel(f"worst-case accuracy, ε = {eps:g} (95 % CI)")
    ax.set_title(f"{len(points)} configurations (seed means) and their Pareto front", fontsize=9)
    ax.legend(**legend_style(fig))
    names = "\n".join(f"{number}: {c.name}" for number, c in enumerate(front, 1))
    fig.text(0.01, 0.01, names, fontsize=7, va="bottom", ha="left", family="monospace")
    fig.tight_layout(rect=(0, 0.03 * len(front) + 0.02, 1, 1))
    return fig


def saturation_vs_lambda(configs) -> Figure:
    """Mean over hidden layers of the saturated fraction (solid) and, where the activation has
    a float32-flat point, of the fraction of units past it (dashed), vs λ."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    groups = _groups(configs)
    colours = series_colours(groups)
    all_lams = []
    for key, cs in groups.items():
        lams = _lams(cs)
        all_lams += lams
        for prefix, style in ((names.SATURATION, "-"), (names.SATURATION_FLAT, "--")):
            ys = [c.mean(lambda t, p=prefix: _layer_mean(t.metrics, p)) for c in cs]
            if any(y is not None for y in ys):
                ax.plot(
                    lams,
                    ys,
                    ls=style,
                    marker="o",
                    color=colours[key],
                    label=" ".join(key) + (" float32-flat" if "flat" in prefix else ""),
                )
    _lam_axis(ax, all_lams or [1.0])
    ax.set_ylabel("fraction of hidden units")
    ax.set_ylim(-0.02, 1.02)
    if ax.get_legend_handles_labels()[0]:  # runs without saturation metrics draw no line
        ax.legend(loc="upper left", bbox_to_anchor=(1, 1), **legend_style(fig))
    else:
        ax.text(0.5, 0.5, "no trial logged saturation metrics", ha="center", va="center",
                transform=ax.transAxes)  # fmt: skip
    fig.tight_layout()
    return fig


def _layer_mean(metrics: dict, prefix: str) -> float | None:
    values = names.layer_values(metrics, prefix)
    return sum(values) / len(values) if values else None


def defence_comparison(configs, eps: float) -> Figure:
    """The paper's question at a glance: worst-case accuracy at eps (solid, 95 % CI) and naive
    FGSM (dashed) against λ, one colour per defence, one panel per architecture x activation."""
    groups = _groups(configs, by_defence=False)
    labels = sorted({defence_label(c) for c in configs})
    colours = series_colours(labels)
    fig, axes = panels(len(groups))
    for ax, ((arch, act), cs) in zip(axes, groups.items(), strict=True):
        for label in labels:
            mine = [c for c in cs if defence_label(c) == label]
            if not mine:
                continue
            ys, err = _error_bars(mine, lambda c: c.worst(eps), lambda c: c.worst_interval(eps))
            ax.errorbar(_lams(mine), ys, yerr=err, color=colours[label], marker="s", lw=2,
                        capsize=3, label=f"{label}: worst")  # fmt: skip
            ax.plot(_lams(mine), [c.fgsm(eps) for c in mine], color=colours[label], ls="--",
                    marker="o", lw=1, alpha=0.7, label=f"{label}: FGSM")  # fmt: skip
        _lam_axis(ax, _lams(cs))
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{arch}, {act}: accuracy at ε = {eps:g}", fontsize=10)
        ax.set_ylabel("accuracy")
    axes[min(PANEL_COLUMNS, len(axes)) - 1].legend(loc="upper left", bbox_to_anchor=(1, 1),
                                                   **legend_style(fig))  # fmt: skip
    fig.tight_layout()
    return fig


def worst_case_curves(configs, eps: float) -> Figure:
    """Worst-case accuracy against eps (95 % CI) of the best configuration (by worst case at
    `eps`, collapsed ones left out) of each architecture x defence x activation: each series its
    own colour, named in full."""
    best: dict[tuple[str, str, str], Configuration] = {}
    for c in configs:
        if c.collapsed or c.worst(eps) is None:
            continue
        t = c.trials[0]
        key = (t.arch, defence_label(c), t.activation)
        if key not in best or c.worst(eps) > best[key].worst(eps):
            best[key] = c
    colours = series_colours(sorted(best))
    fig = Figure(figsize=(8.5, 5))
    ax = fig.subplots()
    for key, c in sorted(best.items()):
        first = c.trials[0]
        budgets = sorted(e for e in first.worst_curve if e != first.unbounded_eps)
        ys = [c.worst(e) for e in budgets]
        cis = [c.worst_interval(e) for e in budgets]
        err = [[y - ci[0] if ci else 0 for y, ci in zip(ys, cis, strict=True)],
               [ci[1] - y if ci else 0 for y, ci in zip(ys, cis, strict=True)]]  # fmt: skip
        ax.errorbar(budgets, ys, yerr=err, marker="s", lw=2, capsize=3, color=colours[key],
                    label=f"{', '.join(key)} (λ={first.lam:g})")  # fmt: skip
    ax.set_xlabel("ε (L∞)")
    ax.set_ylabel("worst-case accuracy (95 % CI)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("best configuration per architecture, defence and activation", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1), **legend_style(fig))
    fig.tight_layout()
    return fig


def defence_table(record: SweepRecord, eps: float) -> list[str]:
    """Markdown rows per configuration: clean, naive FGSM, worst case per eps with its
    interval, whether audited, and the training cost per epoch as a ratio to `none` with the
    same architecture, activation and λ."""
    configs = [c for c in record.configurations() if c.trials[0].evaluated]
    eps_list = record.evaluated_eps()

    def cost_key(c: Configuration, label: str) -> tuple:
        t = c.trials[0]
        return (t.arch, t.activation, t.lam, label)

    cost = {cost_key(c, defence_label(c)): c.mean(lambda t: t.metrics.get(names.SECONDS_PER_EPOCH))
            for c in configs}  # fmt: skip
    header = ["architecture", "activation", "defence", "λ", "seeds", "clean", f"FGSM ε={eps:g}"]
    header += [f"worst ε={e:g} [95% CI]" for e in eps_list]
    header += ["audited", "s/epoch", "cost vs none", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in sorted(configs, key=lambda c: cost_key(c, defence_label(c))):
        t = c.trials[0]
        seconds, base = cost.get(cost_key(c, defence_label(c))), cost.get(cost_key(c, "none"))
        ratio = f"{seconds / base:.1f}×" if seconds and base else "–"
        failures = sorted({x.defence_failure.split(":")[0] for x in c.trials if x.defence_failure})
        flags = sorted({f for x in c.trials for f in x.flags})
        note = ", ".join(["collapsed"] if c.collapsed else [*failures, *flags])
        cells = [t.arch, t.activation, defence_label(c), f"{t.lam:g}", str(len(c.trials)),
                 shown(c.clean, None), shown(c.fgsm(eps), None)]  # fmt: skip
        cells += [shown(c.worst(e), c.worst_interval(e)) for e in eps_list]
        cells += ["yes" if all(x.audited for x in c.trials) else "no", shown(seconds, None),
                  ratio, note or "–"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def several_defences(record: SweepRecord) -> bool:
    return len({defence_label(c) for c in record.configurations() if c.trials[0].evaluated}) > 1


def configuration_table(record: SweepRecord, rule: SelectionRule) -> list[str]:
    champion = champion_or_none(record.trials.values(), rule)
    e = rule.eps
    lines = [
        "| configuration | seeds | λ | defence | activation | clean [95% CI] | FGSM | "
        f"worst ε={e:g} [95% CI] | sd over seeds | flags | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(record.configurations(), key=lambda c: c.name):
        t = c.trials[0]
        chosen = champion is not None and c.name == champion.configuration.name
        name = f"**{c.name}** (champion)" if chosen else c.name
        spread = c.spread(e)
        flags = ", ".join(sorted({f for x in c.trials for f in x.flags})) or "–"
        lines.append(
            f"| {name} | {len(c.trials)} | {t.lam:g} | {t.defence} | {t.activation} | "
            f"{shown(c.clean, c.clean_interval())} | {shown(c.fgsm(e), None)} | "
            f"{shown(c.worst(e), c.worst_interval(e))} | "
            f"{f'{spread[0]:.3f}' if spread else 'one seed'} | {flags} | "
            f"{configuration_verdict(c, rule)[1]} |"
        )
    return lines


def champion_paragraph(record: SweepRecord, rule: SelectionRule) -> list[str]:
    champion = champion_or_none(record.trials.values(), rule)
    if champion is None:
        return ["No configuration passes the rule yet."]
    c, e = champion.configuration, rule.eps
    reported, chosen = c.worst_on(e, names.REPORT), c.worst_on(e, names.SELECTION)
    if reported is None:
        return [f"Champion: **{c.name}**, worst case {shown(c.worst(e), c.worst_interval(e))}."]
    first = c.trials[0]
    return [
        f"Champion: **{c.name}** ({len(c.trials)} seed{'s' if len(c.trials) > 1 else ''}; "
        f"exported: seed {champion.model.seed}, run `{champion.model.run_id}`). It was chosen on "
        f"the {first.half_points(names.SELECTION)} selection points (worst case {chosen:.3f} at "
        f"ε = {e:g}) and is reported on the other {first.half_points(names.REPORT)} points, "
        "which took no part in choosing it: "
        f"**{shown(reported, c.worst_interval(e, names.REPORT))}** (95 % CI). The maximum of "
        "many noisy figures overstates the winner; the report points do not.",
    ]


def comparison_lines(comparisons: ReportComparisons | None) -> list[str]:
    if comparisons is None:
        return []
    missing = ([] if not comparisons.left_out else [
        "", f"{comparisons.left_out} comparisons left out: their runs have no per-example "
        "results (robustness/per_example.json) to pair, from before satsweep stored them or "
        "from a failed upload."])  # fmt: skip
    if not comparisons.rows:
        return ["", "## Compared with the baselines", *missing]
    lines = ["", "## Compared with the baselines", "",
             "| comparison | worst case, points [95% CI] | p | Holm-adjusted p | detectable |",
             "|---|---|---|---|---|"]  # fmt: skip
    for label, p, adjusted in comparisons.rows:
        w = p.worst
        lines.append(
            f"| {label} | {100 * w.diff:+.1f} [{100 * w.ci_low:+.1f}, {100 * w.ci_high:+.1f}] | "
            f"{w.p_value:.2g} | {adjusted:.2g} | {'yes' if adjusted < 0.05 else 'no'} |"
        )
    detectable = comparisons.detectable_points
    power = (f"With these points and seeds the sweep could tell apart differences of about "
             f"{detectable:.1f} points or more (80 % power, 5 % level); smaller ones are within "
             "the noise. ") if math.isfinite(detectable) else ""  # fmt: skip
    lines += [
        "",
        power + "One seed each: exact McNemar test on the discordant points, paired "
        "bootstrap interval; several: Welch's t over the seeds' figures (each carries its "
        "points' noise). p-values adjusted for the number of comparisons (Holm).",
    ]
    return lines + missing


def summary_markdown(
    record: SweepRecord, rule: SelectionRule, comparisons: ReportComparisons | None = None
) -> str:
    lines = [f"# Sweep summary (ε = {rule.eps:g})", ""]
    lines += champion_paragraph(record, rule) + [""]
    lines += configuration_table(record, rule)
    lines += ["", f"Rule: {RULE} (min_clean_acc {rule.min_clean_acc:g}, eps {rule.eps:g}). "
              "Worst case is per example over every attack run on the point; audited trials "
              "include Square and AutoAttack. Intervals: Wilson for one seed, Student's t "
              "over the seeds (which carry their points' noise) for several."]  # fmt: skip
    lines += comparison_lines(comparisons)
    if several_defences(record):
        lines += ["", "## Defences compared", ""] + defence_table(record, rule.eps)
        lines += ["", "`s/epoch` is the mean wall-clock training time per epoch (attack crafting "
                  "included); `cost vs none` divides it by the undefended configuration with the "
                  "same architecture, activation and λ."]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(client: MlflowClient, record: SweepRecord, rule: SelectionRule) -> list[str]:
    """Log the report's figures and summary to the sweep's parent run; returns their paths."""
    configs = [c for c in record.configurations() if c.trials[0].evaluated]
    if not configs:
        raise SelectionError(f"sweep {record.name!r} has no evaluated trial yet: nothing to report")
    eps = rule.eps
    artifacts = {
        "report/robustness_vs_lambda.png": robustness_vs_lambda(configs, eps),
        "report/clean_vs_worst_case.png": clean_vs_worst(configs, record.trials.values(), eps),
        "report/saturation_vs_lambda.png": saturation_vs_lambda(configs),
        "report/worst_case_curves.png": worst_case_curves(configs, eps),
    }
    if several_defences(record):
        artifacts["report/defence_comparison.png"] = defence_comparison(configs, eps)
    for path, fig in artifacts.items():
        client.log_figure(record.parent_run_id, fig, path)
    baselines = Baselines.of_sweep(record.parent.data.params)
    comparisons = baseline_comparisons(client, record, eps, baselines)
    summary = summary_markdown(record, rule, comparisons)
    client.log_text(record.parent_run_id, summary, "report/summary.md")
    annotate_runs(client, record, rule, comparisons)
    return [*artifacts, "report/summary.md"]
