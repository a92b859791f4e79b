"""The digital twin: the one domain model of the project, which every other package speaks.

`flow` (a flow's identity, `FlowKey`, and its conversions), `state` (the cluster state), `params` (cost
parameters and thresholds), `cost` (the cost model, eq. (1)-(6)), `migration` (actions, what they do to a
state and what they cost), `scenario` (which remedy a state needs), `loop_metrics` (the closed loop's
reversals, re-migrated flows, instance-seconds and SLA flow-seconds, for the twin and the testbed alike)
and `sim` (the batched simulator the policy is trained in).
"""
