"""Optimal: problem (3)-(6) solved with a MILP solver (HiGHS), the reference of Figs. 4-6.

* scale-out / scale-in: the total that `twin.migration.apply` charges (eq. (2) summed over the moved
  flows, C_R = R·ΔN and the ω threshold penalties) is minimised exactly. The penalties are linear
  with slack variables; the eq. (2) coefficients are the constants `twin.cost.flow_migration_cost`
  returns for every allowed (flow, destination) pair.
* load balancing: lexicographic with a stated tolerance. A certified lower bound L of the variance of
  the active utilisations comes from a relaxation (flows split, or only the large ones binary; the
  squares as tangent cuts); then eq. (3) is minimised over the answers whose variance is at most
  min(L + variance_gap·(var_ori − L), any heuristic's): answers from a box of deviations that lies
  under that cap, a cost bound from the cap relaxed by tangent cuts.

Moves are restricted (scale-out: flows of overloaded instances, to the other instances; scale-in:
flows of underloaded instances, to active instances; load balancing: flows of instances above the
balanced utilisation, to instances below it). Every answer is scored by `twin.migration.apply`, and
the best answer of the warm-start policies is always a candidate, so Optimal is never worse than
any of them. docs/optimal.md gives the formulations, what the restrictions lose, the gap definition
and measurements.

The package: `policy` (the `Optimal` policy), `scaling` (the scale-out/scale-in model), `balancing` (the
three-phase load-balancing solve and its model), `moves` (the allowed moves and the rows every model shares),
`answers` (candidates scored by the cost model, the gap), `milp` (the modelling layer over highspy) and
`highs_worker` (the process HiGHS runs in, stopped when a solve overruns its time limit).
"""
from gnn_policy.optimal.answers import improvement_gap
from gnn_policy.optimal.policy import Optimal

__all__ = ["Optimal", "improvement_gap"]
