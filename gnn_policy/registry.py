"""Policies by name: what `dm-bench --policies`, the controller's config and the REST API accept.

Names are resolved lazily so that asking for a baseline never imports the solver or torch.
"""
from __future__ import annotations

from collections.abc import Callable

from gnn_policy.base import Policy


class UnknownPolicy(ValueError):
    """A policy name that is not registered; the message lists the known ones."""


def _baseline(name: str) -> Callable[..., Policy]:
    def make(seed: int = 0, **_: object) -> Policy:
        from gnn_policy.baselines import BASELINES

        cls = BASELINES[name]
        return cls(seed=seed) if name == "random" else cls()

    return make


def _optimal(seed: int = 0, time_limit_s: float = 10.0, checkpoint: str | None = None, with_agent: bool = True,
             **_: object) -> Policy:
    """Optimal warm-started from every baseline and, `with_agent`, from DeepMigration (the `checkpoint`
    policy), so that the yardstick is never worse than any policy it is compared with. The trainer's teacher
    leaves the agent out: a policy must not learn from its own answers."""
    from gnn_policy.baselines import OFM, Pairwise, RandomScaleIn, SizeGreedy
    from gnn_policy.optimal import Optimal

    warm_start: list[Policy] = [OFM(), SizeGreedy(), Pairwise(), RandomScaleIn(seed=seed)]
    if with_agent:
        warm_start.append(_deepmigration(seed=seed, checkpoint=checkpoint))
    return Optimal(warm_start=warm_start, time_limit_s=time_limit_s, seed=seed)


def _deepmigration(seed: int = 0, checkpoint: str | None = None, sample: bool = False, **_: object) -> Policy:
    """`DeepMigration`, with the closed loop's act/hold and target when the checkpoint has a control head
    (`sample`: drawn from π, for on-policy learning on the testbed)."""
    from gnn_policy.control import LoopMigration

    return LoopMigration.load(checkpoint, seed=seed, sample=sample)


def _lookahead(seed: int = 0, checkpoint: str | None = None, residual: str | None = None,
               k: int | None = None, candidates: tuple[str, ...] | None = None, **_: object) -> Policy:
    """DeepMigration behind the look-ahead (docs/agent.md, "Look-ahead"): the residual twin at `residual`
    (`gnn_policy.lookahead.LOOKAHEAD_TWIN` when None) scores its action against the other candidates k
    periods ahead."""
    from gnn_policy.lookahead import CANDIDATES, HORIZON, LookAhead

    return LookAhead.load(_deepmigration(seed=seed, checkpoint=checkpoint), residual,
                          k=HORIZON if k is None else k, candidates=CANDIDATES if candidates is None else candidates)


def _student(seed: int = 0, **_: object) -> Policy:
    """The shipped student of `dm-distill` (docs/agent.md, "Student") inside the unchanged DeepMigration."""
    from gnn_policy.agent import DeepMigration
    from gnn_policy.distill import STUDENT_PATH

    return DeepMigration.load(STUDENT_PATH, seed=seed)


def _rule(target: float | None = None, **_: object) -> Policy:
    from gnn_policy.rule_policy import RULE_TARGET, RuleMigration

    return RuleMigration(RULE_TARGET if target is None else target)


def _rule_hold(**_: object) -> Policy:
    from gnn_policy.rule_policy import HoldingRule

    return HoldingRule()


def _random_weights(seed: int = 0, checkpoint: str | None = None, **_: object) -> Policy:
    """The shipped network's shape with weights drawn from `seed` (`REPLICAS`: the benchmark averages seeds)."""
    from gnn_policy.rule_policy import random_weights

    return random_weights(seed, checkpoint=checkpoint)


_FACTORIES: dict[str, Callable[..., Policy]] = {
    "ofm": _baseline("ofm"),
    "size-greedy": _baseline("size-greedy"),
    "pairwise": _baseline("pairwise"),
    "random": _baseline("random"),
    "optimal": _optimal,
    "deepmigration": _deepmigration,
    "deepmigration-lookahead": _lookahead,
    "deepmigration-student": _student,
    "deepmigration-rule": _rule,
    "deepmigration-rule-hold": _rule_hold,
    "deepmigration-random": _random_weights,
}

POLICY_NAMES: tuple[str, ...] = tuple(_FACTORIES)

REPLICAS: dict[str, int] = {"deepmigration-random": 3}
"""Policies a benchmark runs with this many seeds (seed, seed + 1, ...) and reports as one row, the mean over
the seeds (docs/benchmark.md, "Ablations and the hindsight bound")."""


def make_policy(name: str, *, seed: int = 0, **options: object) -> Policy:
    """A fresh policy called `name`; `options` go to its factory (e.g. `checkpoint`, `time_limit_s`)."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise UnknownPolicy(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}") from None
    return factory(seed=seed, **options)
