"""Small hand-built states shared by the tests of the translator, the network, the agent and training."""
from __future__ import annotations

from twin.flow import FiveTuple
from twin.state import ClusterState, Flow, Instance


def cluster(rates_per_instance: list[list[float]], *, capacity: float = 1000.0, buffer: float = 1000.0,
            sla_ms: float = 110.0, standby: int = 0) -> ClusterState:
    """Instance k holds flows of the given rates (packets/s); `standby` inactive instances follow."""
    instances = [Instance(f"nf{k}", capacity, buffer) for k in range(len(rates_per_instance))]
    instances += [Instance(f"nf{len(instances) + k}", capacity, buffer, active=False) for k in range(standby)]
    flows = [Flow(f"f{k}.{i}", FiveTuple("10.0.0.1", "10.0.0.2", 1000 * k + i, 80, 6), rate, sla_ms, f"nf{k}")
             for k, rates in enumerate(rates_per_instance) for i, rate in enumerate(rates)]
    return ClusterState.from_objects(instances, flows)


def simulated_dataset(root, *, steps: int = 120, utilisation: float = 0.8, truth=None) -> dict:
    """Three recordings made by the twin's simulator with known parameters (twin.fidelity.synthetic) under
    `root`, split train (seed 1), validation (seed 101) and test (seed 201) by `root`/split.json; returns
    the truth and the recordings' paths."""
    import dataclasses
    import json

    import numpy as np

    from trace_replay.episodes import build_episodes
    from twin.fidelity.synthetic import Truth, record_simulation

    truth = truth or Truth()
    paths = {}
    for split, seed in (("train", 1), ("validation", 101), ("test", 201)):
        batch = build_episodes("trace_replay/data/lbnl_sample.pcap.gz", n_episodes=1, n_steps=steps,
                               n_instances=2, seed=seed, bin_s=1.0, max_flows=400)
        batch = dataclasses.replace(batch, rate=batch.rate * 50)  # packets enough that whole drops count
        capacity = np.full_like(batch.capacity, batch.rate.sum(-1).mean() / 2 / utilisation)
        batch = dataclasses.replace(batch, capacity=capacity, buffer=capacity * 0.5)
        paths[split] = root / f"sim-{seed}"
        record_simulation(batch, paths[split], truth, seed=seed)
    (root / "split.json").write_text(json.dumps({split: [path.name] for split, path in paths.items()}))
    return {"truth": truth, "paths": paths}


def nf_pid(cluster, instance: str) -> int:
    """The pid of a live cluster's NF process, found by its control socket (unique to the run): faults are
    injected by pid only, never by name."""
    from pathlib import Path

    wanted = ["-m", "mininet_topos.nf_instance", "--instance", instance]
    socket_path = cluster.nfs[instance]["control_socket"]
    found = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().decode().split("\0")
        except (OSError, ValueError):
            continue
        if proc.name.isdigit() and args[1:5] == wanted and socket_path in args:
            found.append(int(proc.name))
    [pid] = found
    return pid


def manual_two_nf_setup():
    """The live fault and IPv6 tests' cluster and controller config: two NFs, no standby, thresholds no load
    reaches, so no scenario ever acts and only the moves a test asks for happen (`mode` manual)."""
    from mininet_topos.nf_cluster import ClusterSpec

    spec = ClusterSpec(active=2, standby=0, capacity_pps=300, buffer_packets=1000, processing_ms=5)
    config = {"thresholds": {"high": 0.95, "low": 0.0, "var": 1.0}, "quiet_ms": 50, "rule_idle_timeout_s": 5,
              "mode": "manual"}
    return spec, config
