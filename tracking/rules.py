"""The two rules a spec declares for reading a sweep, kept free of MLflow so that checking a spec
imports only pydantic: how the champion is chosen (`SelectionRule`, the `selection` section) and
what the report compares every arm with (`Baselines`, the `comparisons` section). Both are logged
on the sweep run as params and read back from there (`of_sweep`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

REFERENCE_EPS = 0.1  # the MNIST reference budget (docs/method.md, section 4)


class SelectionRule(BaseModel):
    """The masking-aware rule's inputs: the budget whose worst case is maximised, the clean
    accuracy floor, and whether flagged trials may be chosen unaudited."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    # null: REFERENCE_EPS if the sweep evaluates it, else its largest evaluation budget (the spec
    # resolves it, so the sweep run logs a number)
    eps: float | None = Field(None, gt=0, le=1, json_schema_extra={"fix": "use e.g. 0.1"})
    min_clean_acc: float = Field(0.9, ge=0, le=1, json_schema_extra={"fix": "use e.g. 0.9"})
    include_flagged: bool = False

    def resolved(self, evaluated_eps: list[float]) -> SelectionRule:
        """The rule with `eps` filled in from the budgets a sweep evaluates."""
        if self.eps is not None:
            return self
        eps = REFERENCE_EPS if REFERENCE_EPS in evaluated_eps else max(evaluated_eps)
        return self.model_copy(update={"eps": eps})

    @classmethod
    def of_sweep(cls, params: dict[str, str], evaluated_eps: list[float]) -> SelectionRule:
        """The rule a sweep logged (`selection.*` params); a sweep run from before the rule was
        logged gets the defaults (its `audit.rank_eps`, if it logged one, as the budget)."""
        eps = params.get("selection.eps", params.get("audit.rank_eps", "None"))
        rule = cls(
            eps=None if eps == "None" else float(eps),
            min_clean_acc=float(params.get("selection.min_clean_acc", cls().min_clean_acc)),
            include_flagged=params.get("selection.include_flagged", "False") == "True",
        )
        return rule.resolved(evaluated_eps or [REFERENCE_EPS])

    def overridden(self, **flags) -> tuple[SelectionRule, list[str]]:
        """The rule with the command line's flags (None: not given) applied, and a line per flag
        that changed the sweep's value, for the command to print."""
        given = {k: v for k, v in flags.items() if v is not None and getattr(self, k) != v}
        said = [f"--{k.replace('_', '-')} {_shown(v)} overrides the sweep's "
                f"{_shown(getattr(self, k))}" for k, v in given.items()]  # fmt: skip
        return self.model_copy(update=given), said

    def describe(self) -> str:
        flagged = "flagged trials included" if self.include_flagged else "flagged ones if audited"
        return f"worst case at eps {self.eps:g}, clean >= {self.min_clean_acc:g}, {flagged}"


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value).lower()


class Baselines(BaseModel):
    """What the report compares every arm with: each λ with this λ (same architecture,
    activation and defence), each defence with this one (same architecture, activation and λ);
    null turns that family off."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    lam: float | None = 0.0
    defence: str | None = "none"

    @classmethod
    def of_sweep(cls, params: dict[str, str]) -> Baselines:
        lam, defence = params.get("comparisons.lam", "0.0"), params.get("comparisons.defence")
        return cls(
            lam=None if lam == "None" else float(lam),
            defence="none" if defence is None else None if defence == "None" else defence,
        )
