"""The digital twin: the one domain model of the project, which every other package speaks.

`flow` (a flow's identity, `FlowKey`, and its conversions), `state` (the cluster state), `params` (cost
parameters and thresholds), `cost` (the cost model, eq. (1)-(6)), `migration` (actions, what they do to a
state and what they cost), `scenario` (which remedy a state needs) and `sim` (the batched simulator the
policy is trained in).
"""
