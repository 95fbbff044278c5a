"""What a reader sees where they land in MLflow's UI: the sweep's answer as the parent run's
description (MLflow renders it as markdown on the run's page), and on every trial a one-line
description and two tags the run list can filter on. Written with the report, from the same
record and rule, so `satsweep report` redoes them; the report itself stays the full account.

Tags, searchable in the UI's filter box:
- `satsweep.champion`: "true" on the trial the rule exports (the champion configuration's
  representative seed), "false" on every other trial;
- `satsweep.selection`: "in" or "out" by the sweep's rule.
"""

from __future__ import annotations

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from tracking import metric_names as names
from tracking.compare import ReportComparisons
from tracking.evidence import shown
from tracking.record import Configuration, SweepRecord, TrialRecord
from tracking.runs import DESCRIPTION_TAG
from tracking.select import (
    Champion,
    SelectionRule,
    champion_or_none,
    configuration_verdict,
    verdict,
)

CHAMPION_TAG = "satsweep.champion"
SELECTION_TAG = "satsweep.selection"
TABLE_ROWS = 10  # configurations in the parent's short table; the report has them all
CHAMPION_FILTER = f"tags.{CHAMPION_TAG} = 'true'"  # MLflow's search takes the dotted key bare


def annotate_runs(
    client: MlflowClient,
    record: SweepRecord,
    rule: SelectionRule,
    comparisons: ReportComparisons | None = None,
) -> None:
    """Every trial's description and tags (written only where they changed), then the
    parent's description."""
    champion = champion_or_none(record.trials.values(), rule)
    for t in record.trials.values():
        chosen = champion is not None and t.run_id == champion.model.run_id
        eligible, why = verdict(t, rule)
        tags = {
            DESCRIPTION_TAG: trial_description(t, rule, chosen, (eligible, why)),
            CHAMPION_TAG: str(chosen).lower(),
            SELECTION_TAG: "in" if eligible else "out",
        }
        if any(t.tags.get(k) != v for k, v in tags.items()):  # one call per run: 18 ms each
            client.log_batch(t.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    description = sweep_description(record, rule, champion, comparisons)
    client.set_tag(record.parent_run_id, DESCRIPTION_TAG, description)


def trial_description(
    t: TrialRecord, rule: SelectionRule, chosen: bool, judged: tuple[bool, str] | None = None
) -> str:
    """One line: in or out of selection and why, each threshold beside the value it judged
    (the clean floor, and every raised masking flag's own threshold). `judged`: the trial's
    `verdict` where the caller has it already."""
    eligible, why = judged or verdict(t, rule)
    reason = why.removeprefix("in: ").removeprefix("out: ")
    head = "**Champion**, in" if chosen else ("In" if eligible else "**Out** of")
    figures = [] if "clean " in reason else [f"clean {t.clean:.3f} (floor {rule.min_clean_acc:g})"]
    flags = t.flag_reasons()
    if flags and "flagged (" not in reason:
        figures.append(f"masking flags {', '.join(flags)}")
    worst = t.worst(rule.eps)
    if worst is not None:
        figures.append(f"worst case {worst:.3f} at ε = {rule.eps:g}")
    return f"{head} selection: {'; '.join([reason, *figures])}."


def sweep_description(
    record: SweepRecord,
    rule: SelectionRule,
    champion: Champion | None,
    comparisons: ReportComparisons | None,
) -> str:
    """The sweep's answer in short: the champion with its unbiased figure, the rule, the best
    configurations with their verdicts, the comparisons with the baselines, and where the rest
    is."""
    lines = [champion_line(champion, rule), "",
             f"**Rule:** {rule.describe()}; configurations are seeds averaged, chosen on the "
             "selection points and reported on the report points.",
             f"Filter: `{CHAMPION_FILTER}` finds the champion, "
             f"`tags.{SELECTION_TAG} = 'in'` the trials the rule admits.", ""]  # fmt: skip
    lines += short_table(record, rule, champion)
    if comparisons is not None and comparisons.rows:
        lines += ["", "**Against the baselines** (worst case, points, 95 % CI, Holm-adjusted p):"]
        for label, p, adjusted in comparisons.rows[:TABLE_ROWS]:
            w = p.worst
            lines.append(f"- {label}: {100 * w.diff:+.1f} [{100 * w.ci_low:+.1f}, "
                         f"{100 * w.ci_high:+.1f}], p = {adjusted:.2g}")  # fmt: skip
        if len(comparisons.rows) > TABLE_ROWS:
            lines.append(f"- and {len(comparisons.rows) - TABLE_ROWS} more in the report")
    lines += ["", "The full report: `report/summary.md` and the figures under `report/` "
              "(Artifacts tab)."]  # fmt: skip
    return "\n".join(lines)


def champion_line(champion: Champion | None, rule: SelectionRule) -> str:
    if champion is None:
        return "**No configuration passes the rule yet.**"
    c, e, model = champion.configuration, rule.eps, champion.model
    reported = c.worst_on(e, names.REPORT)
    figure = (f"{shown(reported, c.worst_interval(e, names.REPORT))} on the report points"
              if reported is not None else shown(c.worst(e), c.worst_interval(e)))  # fmt: skip
    seeds = f"{len(c.trials)} seed{'s' if len(c.trials) > 1 else ''}"
    return (
        f"**Champion: {c.name}** ({seeds}): worst case at ε = {e:g} {figure}, clean "
        f"{shown(c.clean, c.clean_interval())}. Exported model: run `{model.name}` "
        f"({model.run_id})."
    )


def short_table(record: SweepRecord, rule: SelectionRule, champion: Champion | None) -> list[str]:
    """The best TABLE_ROWS configurations, admitted ones first, by the figure the rule ranks."""
    e = rule.eps
    configs = record.configurations()
    verdicts = {c.name: configuration_verdict(c, rule) for c in configs}

    def rank(c: Configuration) -> tuple:
        return (not verdicts[c.name][0], -(c.choosing_worst(e) or -1.0), c.name)

    configs.sort(key=rank)
    lines = [f"| configuration | clean | worst ε={e:g}, selection points (ranks) | "
             "worst, all points [95% CI] | verdict |", "|---|---|---|---|---|"]  # fmt: skip
    for c in configs[:TABLE_ROWS]:
        chosen = champion is not None and c.name == champion.configuration.name
        lines.append(f"| {f'**{c.name}**' if chosen else c.name} | {shown(c.clean, None)} | "
                     f"{shown(c.choosing_worst(e), None)} | "
                     f"{shown(c.worst(e), c.worst_interval(e))} | "
                     f"{verdicts[c.name][1]} |")  # fmt: skip
    if len(configs) > TABLE_ROWS:
        lines.append(f"\n… and {len(configs) - TABLE_ROWS} more in `report/summary.md`.")
    return lines
