"""The comparison algorithms of section VI.B, each a `gnn_policy.base.Policy`.

* `OFM`: OFM [10] for scale-out, load balancing and scale-in;
* `SizeGreedy`: scale-out, largest flows first onto existing instances;
* `Pairwise`: load balancing between the most and the least loaded instances;
* `RandomScaleIn`: scale-in onto randomly chosen instances.

`BASELINES` maps each policy's `name` to its class. docs/baselines.md describes each algorithm.
"""
from gnn_policy.base import Policy
from gnn_policy.baselines.ofm import OFM
from gnn_policy.baselines.pairwise import Pairwise
from gnn_policy.baselines.random_scale_in import RandomScaleIn
from gnn_policy.baselines.size_greedy import SizeGreedy

BASELINES: dict[str, type[Policy]] = {cls.name: cls for cls in (OFM, SizeGreedy, Pairwise, RandomScaleIn)}

__all__ = ["BASELINES", "OFM", "Pairwise", "RandomScaleIn", "SizeGreedy"]
