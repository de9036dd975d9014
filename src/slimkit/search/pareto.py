"""The Pareto front of measured candidates: no other candidate is both smaller (or faster)
and at least as accurate.

Example:
    >>> front = pareto_front([{"cost": 10, "metric": 0.9}, {"cost": 5, "metric": 0.95},
    ...                       {"cost": 20, "metric": 0.97}])
    >>> [c["cost"] for c in front]
    [5, 20]
"""

from __future__ import annotations


def pareto_front(points: list[dict], cost: str = "cost", metric: str = "metric") -> list[dict]:
    """The non-dominated points, sorted by ``cost`` (lower is better; ``metric``: higher is
    better). Ties keep the first point seen, so the front is deterministic."""
    ordered = sorted(enumerate(points), key=lambda ip: (ip[1][cost], -ip[1][metric], ip[0]))
    front, best = [], float("-inf")
    for _, p in ordered:
        if p[metric] > best:
            front.append(p)
            best = p[metric]
    return front


def choose_plans(options: dict[str, list[tuple]], *, steps: int = 60) -> list[dict]:
    """Plans along the estimated front of a multiple-choice knapsack.

    ``options[unit]`` lists ``(setting, estimated cost, estimated error)``. For each of
    ``steps`` trade-off weights ``lam`` (geometric, from "cost only" to "error only") every
    unit takes the option minimising ``cost + lam * error``. Returns the distinct plans
    ``{unit: setting}``, ordered from the lowest estimated cost (most compressed) up.
    """
    diffs, errs = [], []
    for opts in options.values():
        cs = sorted({c for _, c, _ in opts})
        diffs += [b - a for a, b in zip(cs, cs[1:]) if b > a]
        errs += [abs(e) for _, _, e in opts if e != 0]
    if not diffs or not errs:
        lams = [0.0]
    else:
        # from "cost only" (lam small: a unit gives up the least cost difference for the
        # largest error) to "error only"
        lo = min(diffs) / max(errs) / 10.0
        hi = max(diffs) / min(errs) * 10.0
        ratio = (hi / lo) ** (1.0 / (steps - 1))
        lams = [0.0] + [lo * ratio ** k for k in range(steps)] + [float("inf")]
    seen, plans = set(), []
    for lam in lams:
        plan = {}
        for unit, opts in options.items():
            # ties: the lower error, then the earlier option (deterministic)
            if lam == float("inf"):
                best = min(range(len(opts)), key=lambda i: (opts[i][2], opts[i][1], i))
            else:
                best = min(range(len(opts)),
                           key=lambda i: (opts[i][1] + lam * opts[i][2], opts[i][2], i))
            plan[unit] = opts[best][0]
        key = tuple(sorted(plan.items()))
        if key not in seen:
            seen.add(key)
            plans.append(plan)
    return plans
