"""The residual twin's network: s_{t+1} = s_t + f(s_t, a_t) (`002_90c4d10f2b539789.txt`, eq. (15)-(16)), f a GN
block over the cluster graph, rolled out period by period on its own predictions.

f is the policy's GN block (`gnn_policy.gn`: recurrent φ cells, mean ρ aggregations, so it serves any N)
over an encoding of each node's state history, its action and the globals, decoded per node into the change
of the node's state (`features.STATE`). A linear path from the node inputs to the change sits beside the
GN (f = GN + linear): the twin's best one-period guesses are near-linear in its inputs (the next utilisation
follows the NF's arrivals of the period before), which a tanh-encoded network alone learns slowly.
With a base twin (`ResidualConfig.base`, the calibrated twin of `twin.calibration`), the network corrects
the base's own k-period prediction instead of the last state: s_{t+1} = base_{t+1} + f(s_t, a_t, base_{t+1})
for the utilisation, queue fill and drops (the arrivals, which the base does not predict, still step from
s_t), and the linear path and the head's last layer start at zero, so an unfitted network is the base twin.
A step's prediction is clipped to what is physical (nothing negative, no queue over the buffer, nothing on
a stopped instance) before it becomes the next step's input; the loss reads the unclipped prediction.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from gnn_policy.gn import EdgeUpdate, GlobalUpdate, GNBlock, NodeUpdate, tanh_layer, two_layer
from twin.calibration import CalibratedParams
from twin.residual.features import ACTION_NODE, BASE, EDGE, STATE, STATIC_NODE
from twin.sim import fluid_queue

GLOBAL = ("mean_utilisation", "mean_arrivals", "active_share")
"""Globals, from the node states: the mean over active instances, and the share of instances active."""
DERIVED = ("post_utilisation", "fluid_queue", "fluid_drops")
"""Node inputs computed each period from the state and the action: the utilisation after the moves, and the
fluid queue (twin.sim.fluid_queue, the one queue formula) fed for one period by the last arrivals adjusted by
the moves: the physics the network corrects."""
ANCHORS = {"base_utilisation": "utilisation", "base_queue_fill": "queue_fill", "base_drops": "drops"}
"""The state component each base input predicts (and the network's prediction of it starts from)."""


@dataclass(frozen=True)
class ResidualConfig:
    """Everything that fixes the network's shape; stored in checkpoints and checked on load."""

    hidden: int = 32
    steps: int = 2
    """GN block applications per period."""
    history: int = 3
    """States per node the network reads (the origin and the ones before it)."""
    state: tuple[str, ...] = STATE
    action_node: tuple[str, ...] = ACTION_NODE
    static_node: tuple[str, ...] = STATIC_NODE
    edge: tuple[str, ...] = EDGE
    global_features: tuple[str, ...] = GLOBAL
    derived: tuple[str, ...] = DERIVED
    base: tuple[str, ...] = BASE
    """The base twin's predictions the network reads and corrects; () for none (s' = s + f(s, a))."""
    members: int = 1
    """Networks of this shape, each rolled out on its own; each state component is one member's (`choice`):
    the snapshots of one fit chosen per component on validation (`training.FitConfig.per_component`)."""

    @property
    def node_inputs(self) -> int:
        """History, static features, action, the derived and the base inputs."""
        return (self.history * len(self.state) + len(self.static_node) + len(self.action_node) + len(self.derived)
                + len(self.base))

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> ResidualConfig:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown residual-twin config keys {sorted(unknown)}")
        config = cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})
        current = cls(hidden=config.hidden, steps=config.steps, history=config.history, members=config.members,
                      base=config.base if config.base in ((), BASE) else BASE)
        if config != current:
            raise ValueError("the stored features are not the ones this code computes")
        return config


class ResidualNet(nn.Module):
    """f of eq. (15)-(16) and its k-period rollout (of each member, each component taken from its member)."""

    def __init__(self, config: ResidualConfig = ResidualConfig(), base: CalibratedParams | None = None):
        """`base`: the base twin's fitted parameters (a network with base inputs and no parameters takes
        the calibrated twin's defaults); kept with the weights in the checkpoint."""
        super().__init__()
        self.config = config
        self.base = (base or CalibratedParams()) if config.base else None
        self.members = nn.ModuleList([Member(config) for _ in range(config.members)])
        self.register_buffer("choice", torch.zeros(len(config.state), dtype=torch.long))  # each component's member

    def forward(self, batch: Batch) -> torch.Tensor:
        """[nodes, horizon, 4]: the predicted (unclipped) state of each node after each rolled-out period."""
        if len(self.members) == 1:
            return self.members[0](batch)
        out = torch.stack([member(batch) for member in self.members])
        return torch.stack([out[m, ..., c] for c, m in enumerate(self.choice.tolist())], dim=-1)

    def predict(self, batch: Batch, components: Sequence[str]) -> torch.Tensor:
        """`forward`'s [nodes, horizon, 4] for inference, only `components` filled (the others NaN): only the
        members they are taken from run (each member rolls out on its own predictions, so a component needs its
        whole member, and no other), and a component whose member is its base twin (`Member.is_base`: an
        unfitted member, the per-component fit's choice where no epoch beat the base) is the base's own
        prediction, which that member equals, without running it. The look-ahead scores candidates every
        period with this; training keeps `forward` (an unfitted member learns there)."""
        unknown = set(components) - set(self.config.state)
        if unknown:
            raise ValueError(f"unknown state components {sorted(unknown)}; known: {list(self.config.state)}")
        base_of = {self.config.state.index(ANCHORS[name]): k for k, name in enumerate(self.config.base)}
        choice = self.choice.tolist()
        out: dict[int, torch.Tensor] = {}
        columns = []
        with torch.inference_mode():
            for c, name in enumerate(self.config.state):
                member = self.members[choice[c]]
                if name not in components:
                    columns.append(batch.base.new_full(batch.node_steps.shape[:2], float("nan")))
                elif c in base_of and member.is_base():
                    columns.append(batch.base[..., base_of[c]])
                else:
                    if choice[c] not in out:
                        out[choice[c]] = member(batch)
                    columns.append(out[choice[c]][..., c])
            return torch.stack(columns, dim=-1)


class Member(nn.Module):
    """One network f and its rollout."""

    def __init__(self, config: ResidualConfig):
        super().__init__()
        self.config = config
        h = config.hidden
        self.encode_node = nn.Linear(config.node_inputs, h)
        self.encode_edge = nn.Linear(len(config.edge), h)
        self.encode_global = nn.Linear(len(config.global_features), h)
        self.block = GNBlock(EdgeUpdate(h), NodeUpdate(h), GlobalUpdate(h))
        self.head = two_layer(2 * h, h, len(config.state))
        self.linear = nn.Linear(config.node_inputs, len(config.state))
        with torch.no_grad():
            self.head[-1].weight.mul_(0.0 if config.base else 0.1)
            self.head[-1].bias.zero_()
            if config.base:
                self.linear.weight.zero_()
                self.linear.bias.zero_()

    def forward(self, batch: Batch) -> torch.Tensor:
        """[nodes, horizon, 4]: the predicted (unclipped) state of each node after each rolled-out period."""
        history = batch.x
        node_graph = batch.batch if batch.batch is not None else torch.zeros(history.size(0), dtype=torch.long)
        graphs = int(node_graph.max()) + 1 if node_graph.numel() else 0
        out, edge, prepared = [], None, self.block.prepare(batch.edge_index, history.size(0), node_graph, graphs)
        for j in range(batch.node_steps.size(1)):
            action = batch.node_steps[:, j]
            now = history[:, 0]
            base = batch.base[:, j]
            nodes = torch.cat([history.flatten(1), batch.static, action, derived(now, action, batch.static), base],
                              dim=1)
            if edge is None or not torch.equal(batch.edge_steps[:, j], batch.edge_steps[:, j - 1]):
                # the periods without moves after an action have the same edges: encoded once
                edge = tanh_layer(self.encode_edge, torch.cat([batch.latency, batch.edge_steps[:, j]], dim=1))
            globals_ = self._globals(now, action, node_graph, graphs)
            predicted = self._anchor(now, base) + self._change(nodes, edge, globals_, batch, node_graph, prepared)
            out.append(predicted)
            history = torch.cat([clip(predicted, action[:, ACTION_NODE.index("active_after")])[:, None],
                                 history[:, :-1]], dim=1)
        return torch.stack(out, dim=1)

    def is_base(self) -> bool:
        """Whether the member is its base twin: with base inputs, and the head's last layer and the linear path
        zero (as initialised), the change it adds is exactly 0, so each component the base predicts is the
        base's prediction, period by period, whatever its own rollout."""
        last = self.head[-1]
        return bool(self.config.base) and all(not bool(p.any()) for p in (last.weight, last.bias, self.linear.weight,
                                                                          self.linear.bias))

    def _anchor(self, now: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """What the change is added to: the last state, with each component the base predicts replaced."""
        columns = list(now.unbind(1))
        for k, name in enumerate(self.config.base):
            columns[STATE.index(ANCHORS[name])] = base[:, k]
        return torch.stack(columns, dim=1)

    def _change(self, nodes: torch.Tensor, edge: torch.Tensor, globals_: torch.Tensor, batch: Batch,
                node_graph: torch.Tensor, prepared: dict) -> torch.Tensor:
        """f on the period's node inputs, its encoded edges (`forward`) and globals; `prepared` the block's
        `GNBlock.prepare` for the batch's graph."""
        x, u = torch.tanh(self.encode_node(nodes)), torch.tanh(self.encode_global(globals_))
        for _ in range(self.config.steps):
            x, edge, u = self.block(x, batch.edge_index, edge, u, node_graph, prepared)
        return self.head(torch.cat([x, u.index_select(0, node_graph)], dim=1)) + self.linear(nodes)

    @staticmethod
    def _globals(now: torch.Tensor, action: torch.Tensor, node_graph: torch.Tensor, graphs: int) -> torch.Tensor:
        active = action[:, ACTION_NODE.index("active")]
        weight = scatter(active, node_graph, dim=0, dim_size=graphs, reduce="sum").clamp(min=1.0)
        means = scatter(now[:, [STATE.index("utilisation"), STATE.index("arrivals")]] * active[:, None], node_graph,
                        dim=0, dim_size=graphs, reduce="sum") / weight[:, None]
        share = scatter(active, node_graph, dim=0, dim_size=graphs, reduce="mean")
        return torch.cat([means, share[:, None]], dim=1)


def derived(now: torch.Tensor, action: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
    """[N, 3] the DERIVED inputs. In buffer units the fluid queue's arrivals are the last arrivals per
    capacity-second over the buffer in periods, its service one over that (nothing when stopped)."""
    moved = action[:, ACTION_NODE.index("moved_in")] - action[:, ACTION_NODE.index("moved_out")]
    active = action[:, ACTION_NODE.index("active_after")]
    periods = static[:, STATIC_NODE.index("buffer_periods")].clamp(min=1e-6)
    arrivals = (now[:, STATE.index("arrivals")] + moved).clamp(min=0.0) * active
    queue, drops = fluid_queue(now[:, STATE.index("queue_fill")], arrivals / periods, active / periods,
                               torch.ones_like(periods), 1.0)
    return torch.stack([now[:, STATE.index("utilisation")] + moved, queue, drops], dim=1)


def clip(predicted: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """A predicted state made physical: nothing negative, the queue within the buffer, a stopped instance
    idle."""
    low = predicted.clamp(min=0.0)
    queue = STATE.index("queue_fill")
    low = torch.cat([low[:, :queue], low[:, queue:queue + 1].clamp(max=1.0), low[:, queue + 1:]], dim=1)
    return low * active[:, None]
