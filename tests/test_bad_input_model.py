"""Issue 20, item 4: no NaN, infinity, wrong type or out-of-range number gets into the model.

The boundary is the constructors: `ClusterState` (and every derived copy), `CostParams`, `Thresholds`,
`IndexedAction` and the flow identity's fields. Each refuses with the project's own error, naming the field.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gnn_policy.base import Problem
from gnn_policy.baselines import OFM
from tests.helpers import cluster
from tests.strategies import cluster_states
from twin.flow import FiveTuple, FlowIdError
from twin.migration import IndexedAction, InvalidAction, apply
from twin.params import CostParams, ParamsError, Thresholds
from twin.state import ClusterState, Flow, Instance, StateError

NOT_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
NEGATIVE = st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False)
INSTANCE_ARRAYS = ("buffer", "queue", "processing_ms")
FLOW_ARRAYS = ("rate", "byte_rate", "sla_ms")


def _replace_one(draw, state: ClusterState, name: str, bad: float) -> dict:
    """The arrays of `state` with one entry of field `name` set to `bad`."""
    array = np.array(getattr(state, name), dtype=float)
    index = draw(st.integers(0, array.size - 1))
    array.flat[index] = bad
    return {name: array}


@given(data=st.data(), state=cluster_states(max_flows=8).filter(lambda s: s.n_flows > 0),
       name=st.sampled_from(("capacity", *INSTANCE_ARRAYS, *FLOW_ARRAYS, "migration_ms")),
       bad=st.one_of(NOT_FINITE, NEGATIVE))
def test_a_state_with_a_non_finite_or_negative_number_is_refused_naming_the_field(data, state, name, bad):
    change = _replace_one(data.draw, state, name, bad)
    fields = {f: getattr(state, f) for f in state.__dataclass_fields__} | change
    with pytest.raises(StateError, match=name):
        ClusterState(**fields)
    with pytest.raises(StateError, match=name):
        state.with_changes(**change)


@given(state=cluster_states(max_flows=4), capacity=st.one_of(NOT_FINITE, st.floats(max_value=0.0)))
def test_capacity_must_be_finite_and_positive(state, capacity):
    with pytest.raises(StateError, match="capacity"):
        state.with_changes(capacity=np.full(state.n_instances, capacity))


@pytest.mark.parametrize("field, value", [
    ("capacity_pps", None), ("capacity_pps", math.nan), ("capacity_pps", math.inf),
    ("processing_ms", math.nan),
    ("processing_ms", -1.0), ("buffer_packets", None), ("queue_packets", math.inf),
])
def test_an_instance_with_a_bad_number_is_refused_naming_it(field, value):
    fields = {"id": "nf0", "capacity_pps": 100.0, "buffer_packets": 10.0, field: value}
    with pytest.raises(StateError, match=f"{field.split('_')[0]}.*'nf0'"):
        ClusterState.from_objects([Instance(**fields)], [])


@pytest.mark.parametrize("field, value", [("byte_rate", -5.0), ("rate_pps", math.nan), ("sla_ms", math.inf),
                                          ("byte_rate", None)])
def test_a_flow_with_a_bad_number_is_refused_naming_it(field, value):
    fields = {"id": "f0", "five_tuple": FiveTuple("10.0.0.1", "10.0.0.2", 1, 2, 6), "rate_pps": 1.0,
              "sla_ms": 80.0, "instance": "nf0", field: value}
    with pytest.raises(StateError, match=f"{field.split('_')[0]}.*'f0'"):
        ClusterState.from_objects([Instance("nf0", 100.0, 10.0)], [Flow(**fields)])


@pytest.mark.parametrize("time_s", [math.nan, math.inf, -3.0, None, "1"])
def test_the_state_time_must_be_a_finite_non_negative_number(time_s):
    with pytest.raises(StateError, match="time_s"):
        ClusterState.from_objects([Instance("nf0", 100.0, 10.0)], [], time_s=time_s)


def test_arrays_of_the_wrong_kind_are_refused():
    state = cluster([[10.0], [20.0]])
    with pytest.raises(StateError, match="capacity"):
        state.with_changes(capacity=np.array([None, 1.0], dtype=object))
    with pytest.raises(StateError, match="assignment"):
        state.with_changes(assignment=np.array([0.0, 1.0]))
    with pytest.raises(StateError, match="active"):
        state.with_changes(active=np.array([1.0, 1.0]))
    with pytest.raises(StateError, match="five_tuple"):
        state.with_changes(five_tuple=np.zeros(2))


def test_nan_never_reaches_a_cost_or_a_decision():
    """The failure as reported: a NaN capacity gave `apply` a NaN cost and OFM an even load."""
    state = cluster([[300.0] * 3, [10.0]])
    with pytest.raises(StateError):
        state.with_changes(capacity=np.array([math.nan, 1000.0]))
    _, breakdown = apply(state, IndexedAction(np.array([0]), np.array([1])))
    assert math.isfinite(breakdown.total)
    assert OFM().decide(Problem.of(state, Thresholds(high=0.6))).action is not None


@given(name=st.sampled_from([f for f in CostParams.__dataclass_fields__]),
       bad=st.one_of(NOT_FINITE, NEGATIVE, st.none(), st.just("5")))
def test_cost_parameters_must_be_finite_non_negative_numbers(name, bad):
    with pytest.raises(ParamsError, match=name):
        CostParams(**{name: bad})


def test_the_reported_cost_parameters_are_refused():
    with pytest.raises(ParamsError, match="delta"):
        CostParams(delta=math.nan, omega=math.inf)
    with pytest.raises(ParamsError, match="omega"):
        CostParams(omega=math.inf)


@given(bad=st.one_of(NOT_FINITE, st.none()), field=st.sampled_from(["high", "low", "var"]))
def test_thresholds_must_be_finite_numbers(bad, field):
    with pytest.raises(ParamsError, match=field):
        Thresholds(**{field: bad})


@pytest.mark.parametrize("fields, fragment", [
    ({"flows": np.array([0.0]), "dst": np.array([1.0])}, "flows"),
    ({"flows": np.array([0]), "dst": np.array([1.5])}, "dst"),
    ({"flows": np.array([[0]]), "dst": np.array([[1]])}, "flows"),
    ({"start": np.array([True])}, "start"),
    ({"stop": ["a"]}, "stop"),
])
def test_an_indexed_action_of_non_integers_is_refused(fields, fragment):
    with pytest.raises(InvalidAction, match=fragment):
        IndexedAction(**fields)


def test_an_indexed_action_of_integer_lists_is_taken_as_arrays():
    state = cluster([[10.0], [20.0]])
    after, _ = apply(state, IndexedAction([0], [1]))
    assert after.assignment.tolist() == [1, 1]
    assert IndexedAction(np.array([]), np.array([])).flows.dtype == np.int64


@given(port=st.one_of(st.integers(max_value=-1), st.integers(min_value=0x10000)), proto=st.integers(0, 0xFF))
def test_a_five_tuple_port_outside_16_bits_is_a_flow_id_error(port, proto):
    with pytest.raises(FlowIdError, match="port"):
        FiveTuple("10.0.0.1", "10.0.0.2", port, 80, proto).to_record()


@given(proto=st.one_of(st.integers(max_value=-1), st.integers(min_value=0x100)))
def test_a_five_tuple_protocol_outside_8_bits_is_a_flow_id_error(proto):
    with pytest.raises(FlowIdError, match="protocol"):
        FiveTuple("10.0.0.1", "10.0.0.2", 1, 80, proto).to_record()


@pytest.mark.parametrize("five_tuple, fragment", [
    (FiveTuple("10.0.0.300", "10.0.0.2", 1, 2, 6), "not an IP address"),
    (FiveTuple("10.0.0.1", "10.0.0.2", 70000, 2, 6), "port"),
    (FiveTuple("10.0.0.1", "10.0.0.2", 1, 2, 300), "protocol"),
    (FiveTuple("10.0.0.1", "10.0.0.2", 1.5, 2, 6), "port"),
    ("10.0.0.1:1-10.0.0.2:2/6", "five_tuple of flow 'f0'"),
])
def test_a_flow_with_a_bad_header_field_is_refused_by_the_state(five_tuple, fragment):
    flow = Flow("f0", five_tuple, 1.0, 80.0, "nf0")
    with pytest.raises((StateError, FlowIdError), match=fragment):
        ClusterState.from_objects([Instance("nf0", 100.0, 10.0)], [flow])


def test_a_flow_header_given_as_a_plain_tuple_is_taken():
    flow = Flow("f0", ("10.0.0.1", "10.0.0.2", 1, 2, 6), 1.0, 80.0, "nf0")
    state = ClusterState.from_objects([Instance("nf0", 100.0, 10.0)], [flow])
    assert state.flow(0).five_tuple == FiveTuple("10.0.0.1", "10.0.0.2", 1, 2, 6)
