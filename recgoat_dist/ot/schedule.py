"""Epsilon-scaling (annealing) schedule for log-domain Sinkhorn.

Sinkhorn needs roughly ``max C / eps`` iterations to move mass across the clouds when it starts
from zero potentials. Solving first at a large temperature, where the plan is blurry and a few
iterations suffice, then lowering ``eps`` geometrically and warm-starting from the previous
potentials, gets close to the target solution in ``O(log(max C / eps))`` iterations
(Kosowsky & Yuille 1994; Schmitzer 2019; Feydy et al. 2019, "Interpolating between Optimal
Transport and MMD using Sinkhorn Divergences", Sec. 3.3 and GeomLoss's ``epsilon_schedule``).

The schedule starts at the largest possible cost (the squared diameter of the clouds for the
squared Euclidean cost), multiplies ``eps`` by ``scaling`` at each step and ends at the target
``eps``. The solver runs one iteration per annealing step and then keeps iterating at the
target ``eps`` until its stopping rule holds, so the fixed point is exactly the one of plain
Sinkhorn at ``eps`` (annealing changes the path, not the answer).
"""
from __future__ import annotations

import math
from typing import List, Optional


def eps_schedule(max_cost: float, eps: float, scaling: Optional[float] = 0.5) -> List[float]:
    """Temperatures ``[max_cost, max_cost * scaling, ..., eps]``, strictly decreasing, last = eps.

    ``scaling=None`` (or a problem with ``max_cost <= eps``) gives ``[eps]``: no annealing.
    """
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if scaling is None or max_cost <= eps:
        return [eps]
    if not 0.0 < scaling < 1.0:
        raise ValueError(f"scaling must be in (0, 1), got {scaling}")
    steps = int(math.ceil(math.log(eps / max_cost) / math.log(scaling)))
    temps = [max_cost * scaling**k for k in range(steps)]
    return [t for t in temps if t > eps] + [eps]
