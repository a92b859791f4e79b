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
