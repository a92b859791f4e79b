"""The cluster state and scenario detection (section III)."""
import numpy as np
import pytest

from twin.flow import FiveTuple
from twin.params import Thresholds
from twin.scenario import ScenarioKind, detect, instances_needed
from twin.state import ClusterState, Flow, Instance, StateError

TUPLE = FiveTuple("10.1.0.1", "10.2.0.1", 40000, 80, 6)


def cluster(utilisations, capacity=1000.0, standby=0) -> ClusterState:
    """One flow per active instance carrying the given utilisation, plus idle standby instances."""
    instances = [Instance(f"nf{k}", capacity, 100.0) for k in range(len(utilisations))]
    instances += [Instance(f"sb{k}", capacity, 100.0, active=False) for k in range(standby)]
    flows = [Flow(f"f{k}", TUPLE._replace(src_port=k), u * capacity, 90.0, f"nf{k}")
             for k, u in enumerate(utilisations) if u > 0]
    return ClusterState.from_objects(instances, flows)


def test_loads_and_utilisation_derive_from_flows():
    state = cluster([0.5, 0.2], standby=1)
    assert state.load_pps.tolist() == [500.0, 200.0, 0.0]
    assert state.utilisation.tolist() == [0.5, 0.2, 0.0]
    assert [i.id for i in state.instances] == ["nf0", "nf1", "sb0"]
    assert state.flow(1) == Flow("f1", TUPLE._replace(src_port=1), 200.0, 90.0, "nf1")


@pytest.mark.parametrize("build,message", [
    (lambda: ClusterState.from_objects([Instance("a", 1.0, 1.0), Instance("a", 1.0, 1.0)], []), "'a' appears more"),
    (lambda: ClusterState.from_objects([Instance("a", 0.0, 1.0)], []), "non-positive capacity"),
    (lambda: ClusterState.from_objects([Instance("a", 1.0, 1.0)], [Flow("f", TUPLE, 1.0, 90.0, "b")]),
     "unknown instance 'b'"),
    (lambda: ClusterState.from_objects([Instance("a", 1.0, 1.0, active=False)], [Flow("f", TUPLE, 1.0, 90.0, "a")]),
     "stopped instance 'a'"),
    (lambda: ClusterState.from_objects([Instance("a", 1.0, 1.0)], [Flow("f", TUPLE, -1.0, 90.0, "a")]), "rate"),
])
def test_invalid_states_are_rejected_with_the_reason(build, message):
    with pytest.raises(StateError, match=message):
        build()


@pytest.mark.parametrize("changes,message", [
    (lambda s: {"assignment": np.array([0, 5])}, "outside the cluster"),
    (lambda s: {"active": np.array([True, False])}, "stopped instance 'nf1'"),
    (lambda s: {"rate": np.array([1.0, np.nan])}, "rate must be finite"),
    (lambda s: {"capacity": np.array([1.0, 0.0])}, "'nf1' has a non-positive capacity"),
    (lambda s: {"flow_ids": ("f0", "f0")}, "flow id 'f0' appears more"),
    (lambda s: {"rate": np.ones(3)}, r"rate has shape \(3,\)"),
    (lambda s: {"load": np.ones(2)}, r"no field\(s\) \['load'\]"),
    (lambda s: {"instance_ids": ("nf0",), "capacity": s.capacity[:1], "buffer": s.buffer[:1], "queue": s.queue[:1],
                "active": s.active[:1], "processing_ms": s.processing_ms[:1], "migration_ms": s.migration_ms[:1, :1]},
     "outside the cluster"),
])
def test_a_derived_state_checks_what_it_replaces(changes, message):
    state = cluster([0.5, 0.2])
    with pytest.raises((StateError, TypeError), match=message):
        state.with_changes(**changes(state))


def test_a_derived_state_recomputes_what_derives_from_the_flows():
    state = cluster([0.5, 0.2])
    assert state.utilisation.tolist() == [0.5, 0.2]
    moved = state.with_changes(assignment=np.array([1, 1]))
    assert moved.utilisation.tolist() == [0.0, 0.7]
    assert moved.flows_per_instance.tolist() == [0, 2] and state.flows_per_instance.tolist() == [1, 1]
    with pytest.raises(ValueError):
        moved.assignment[0] = 0


def test_state_arrays_are_read_only():
    state = cluster([0.5, 0.2])
    with pytest.raises(ValueError):
        state.assignment[0] = 1


@pytest.mark.parametrize("utilisations,kind,hot,cold", [
    ([0.70, 0.65, 0.30, 0.30], ScenarioKind.SCALE_OUT, (0, 1), ()),
    ([0.05, 0.40, 0.40, 0.40], ScenarioKind.SCALE_IN, (), (0,)),
    ([0.15, 0.55, 0.45, 0.20], ScenarioKind.LOAD_BALANCE, (), ()),
    ([0.30, 0.32, 0.31, 0.29], ScenarioKind.NONE, (), ()),
    # an underloaded instance the others cannot absorb below Th_high is no scale-in
    ([0.05, 0.59, 0.59], ScenarioKind.LOAD_BALANCE, (), (0,)),
    # overload wins over underload
    ([0.05, 0.62, 0.30], ScenarioKind.SCALE_OUT, (1,), (0,)),
])
def test_detection_per_instance_with_cluster_load_judgment(utilisations, kind, hot, cold):
    scenario = detect(cluster(utilisations), Thresholds(high=0.6, low=0.1, var=0.01))
    assert scenario.kind is kind
    assert scenario.overloaded == hot and scenario.underloaded == cold


def test_trigger_thresholds_are_inclusive():
    assert detect(cluster([0.6, 0.3, 0.3]), Thresholds(high=0.6, low=0.1)).overloaded == (0,)
    assert detect(cluster([0.1, 0.3, 0.3]), Thresholds(high=0.6, low=0.1)).underloaded == (0,)


def test_load_judgment_counts_instances_needed_at_th_high():
    # total 2.1 capacities of load at Th_high 0.6 needs ceil(2.1/0.6) = 4 instances; 2 standby cover the gap
    state = cluster([0.7, 0.7, 0.7], standby=2)
    assert instances_needed(state, Thresholds(high=0.6)) == 4
    assert detect(state, Thresholds(high=0.6)).cluster_utilisation == pytest.approx(0.7)


@pytest.mark.parametrize("kwargs", [{"high": 0.1, "low": 0.2}, {"high": 1.2}, {"low": -0.1}, {"var": -1.0}])
def test_thresholds_out_of_range_are_rejected(kwargs):
    with pytest.raises(ValueError):
        Thresholds(**kwargs)
