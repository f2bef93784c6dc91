"""Replay finished studies' rung-0 results in the order they finished, and count what each promotion
rule would send to rung 1 in an asynchronous search (ASHA: whenever a result arrives, the rung's best
1/eta by the rule go up; an early promotion is never undone).

Rules: ``pareto`` (non-dominated sorting, then crowding distance), ``moving`` (cost bands spread over
the results' own range, taking turns), ``anchored`` (cost bands under the budget, each 3x cheaper,
taking turns: nas_kd's rule). Prints, per study and rule, how many candidates reach rung 1, how many
of them are above a third of the budget, and how many a rule would promote from the final results
alone (no churn). Reads the studies only; trains nothing.

    python benchmarks/promotion_replay.py --studies-dir /root/runs/studies fm5-cold fm5-cold-fc fm5-cold-bands
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence

import optuna

from nas_kd.search.rungs import BANDS, RungResult, banded_order, promotion_order
from nas_kd.study.records import IDENTITY_ATTR


def _moving_order(results: Sequence[RungResult]) -> list[RungResult]:
    """Bands of equal width in log cost over the results' own range (the rule first tried)."""
    logs = [math.log(max(1.0, r.cost)) for r in results]
    low, span = min(logs), max(logs) - min(logs)
    members: list[list[RungResult]] = [[] for _ in range(BANDS)]
    for r, v in zip(results, logs, strict=True):
        members[min(BANDS - 1, int(BANDS * (v - low) / span)) if span > 0 else 0].append(r)
    queues = [promotion_order(b) for b in reversed(members) if b]
    return [q[t] for t in range(max(map(len, queues))) for q in queues if t < len(q)]


def replay(study: optuna.Study, rule: Callable[[Sequence[RungResult]], list[RungResult]],
           eta: int, budget: float) -> tuple[int, int, int]:
    done = sorted((t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                   if t.user_attrs.get("status") == "trained"), key=lambda t: t.datetime_complete)
    seen: list[RungResult] = []
    promoted: set[int] = set()
    for t in done:
        seen.append(RungResult(t.number, 0, t.values[0], t.values[1]))
        promoted |= {r.candidate for r in rule(seen)[: len(seen) // eta]}
    cost = {t.number: t.values[1] for t in done}
    final = len(rule(seen)[: len(seen) // eta])
    return len(promoted), sum(cost[n] > budget / 3 for n in promoted), final


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+")
    p.add_argument("--studies-dir", default="studies")
    a = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print("study            rule      to rung 1  above budget/3  from final results")
    for name in a.studies:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{a.studies_dir}/{name}.db")
        identity = study.user_attrs[IDENTITY_ATTR]
        budget, eta = identity["budget_flops"], identity["eta"]
        rules = {"pareto": promotion_order, "moving": _moving_order,
                 "anchored": lambda rs, b=budget: banded_order(rs, b)}
        for label, rule in rules.items():
            n, big, final = replay(study, rule, eta, budget)
            print(f"{name:16s} {label:9s} {n:9d}  {big:14d}  {final:18d}")


if __name__ == "__main__":
    main()
