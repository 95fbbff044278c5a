"""The sweep report: figures and a summary table on the sweep's parent run, built from the trial
runs' logged metrics (no models), visible in the MLflow UI without downloading anything."""

from __future__ import annotations

from collections import defaultdict

from matplotlib import colormaps
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from tracking import metric_names as names
from tracking.runs import trial_runs
from tracking.select import (
    DEFAULT_EPS,
    DEFAULT_MIN_CLEAN_ACC,
    eligible,
    load_candidates,
    pareto_front,
)
from tracking.sweep_run import latest_sweep_run

NAIVE = "fgsm"


def _evaluated_trial_runs(client: MlflowClient, sweep: str):
    experiment_id, parent = latest_sweep_run(client, sweep)
    runs = trial_runs(client, experiment_id, parent.info.run_id)
    return parent.info.run_id, [r for r in runs if names.CLEAN_ACC in r.data.metrics]


def _groups(runs) -> dict[tuple[str, str], list]:
    """Runs per (architecture, activation), sorted by lambda."""
    groups = defaultdict(list)
    for r in runs:
        groups[(r.data.params.get("arch.name", "?"), r.data.params.get("activation", "?"))].append(
            r
        )
    return {
        k: sorted(v, key=lambda r: float(r.data.params["lam"])) for k, v in sorted(groups.items())
    }


def _lam_axis(ax, lams: list[float]) -> None:
    positive = [x for x in lams if x > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
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
    for ax, ((arch, act), rs) in zip(axes, groups.items(), strict=False):
        lams = [float(r.data.params["lam"]) for r in rs]
        attacks = sorted(
            {
                parsed[0]
                for r in rs
                for k in r.data.metrics
                if (parsed := names.parse_robust_acc(k)) is not None and parsed[1] == eps
            }
        )
        for i, attack in enumerate(attacks):
            ys = [r.data.metrics.get(names.robust_acc(attack, eps)) for r in rs]
            bold = attack == NAIVE
            ax.plot(
                lams,
                ys,
                color="#d62728" if bold else colormaps["tab20"](i % 20),
                marker="o",
                lw=2.5 if bold else 1,
                alpha=1 if bold else 0.6,
                label=attack + (" (naive)" if bold else ""),
            )
        ax.plot(
            lams,
            [r.data.metrics.get(names.worst_case_acc(eps)) for r in rs],
            marker="s",
            color="black",
            lw=2.5,
            label="worst case",
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
        ax.set_title(f"{arch}, {act}, ε = {eps:g}")
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
    for (arch, act), rs in _groups(runs).items():
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
                    label=f"{arch} {act}" + (" float32-flat" if "flat" in prefix else ""),
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


def summary_markdown(candidates, eps: float, min_clean_acc: float) -> str:
    rows = sorted(candidates, key=lambda c: (c.arch, c.activation, c.lam))
    pool = {c.run_id for c in eligible(candidates, min_clean_acc, include_flagged=False)}
    lines = [
        f"# Sweep summary (ε = {eps:g})",
        "",
        "| run | λ | architecture | activation | clean | FGSM | worst case | flags | eligible |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(
            f"| {c.run_name} | {c.lam:g} | {c.arch} | {c.activation} | {fmt(c.clean)} | "
            f"{fmt(c.fgsm)} | {fmt(c.worst)} | {', '.join(c.flags) or '–'} | "
            f"{'yes' if c.run_id in pool else 'no'} |"
        )
    lines += [
        "",
        f"Eligible: FINISHED, clean ≥ {min_clean_acc:g}, no masking flag. "
        "Worst case is per example over every attack run on the point.",
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
    _, candidates = load_candidates(client, sweep, eps)
    artifacts = {
        "report/robustness_vs_lambda.png": robustness_vs_lambda(runs, eps),
        "report/clean_vs_worst_case.png": clean_vs_worst(candidates, eps),
        "report/saturation_vs_lambda.png": saturation_vs_lambda(runs),
    }
    for path, fig in artifacts.items():
        client.log_figure(parent, fig, path)
    client.log_text(parent, summary_markdown(candidates, eps, min_clean_acc), "report/summary.md")
    return [*artifacts, "report/summary.md"]
