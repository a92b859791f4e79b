"""The short versions of the live benchmarks, on the real stack (Open vSwitch userspace datapath, Mininet, NF
processes, `ryu-manager controller_app.app`): a REST load of 50 requests/s for 10 s during the demo
(benchmarks/bench_rest_load.py) and a soak of 100 migrations in rounds through one controller
(benchmarks/bench_soak.py). The full runs and their figures are in docs/testbed.md ("REST load", "Soak").
"""
from __future__ import annotations

import json

import pytest

from benchmarks import bench_rest_load, bench_soak

pytestmark = [
    pytest.mark.network,
    pytest.mark.usefixtures("ovs"),
    pytest.mark.filterwarnings("ignore:distutils Version classes are deprecated:DeprecationWarning"),
]


@pytest.mark.timeout(180)
def test_a_rest_load_during_the_demo_gets_no_5xx_and_loses_or_reorders_no_packet(tmp_path):
    out = tmp_path / "load.json"
    code = bench_rest_load.main(["--rate", "50", "--seconds", "10", "--moves-per-s", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    print("LOAD", json.dumps({k: result[k] for k in ("statuses", "latency_ms", "period_lateness_ms")}))
    assert code == 0 and result["failures"] == []
    assert result["requests"] == 50 * 10 + 10 and result["server_errors"] == 0
    assert {"200", "400", "401", "403", "405"} <= set(result["statuses"])  # reads, bad, unauthorised, not allowed
    assert result["by_kind"]["patch_config"] == {"200": result["by_kind"]["patch_config"]["200"]}
    assert result["packets_sent"] > 0 and result["packets_lost_elsewhere"] == 0
    assert result["packets_reordered_after_setup"] == 0
    assert result["period_lateness_ms"]["periods"] >= 3 and result["period_lateness_ms"]["p99"] is not None


@pytest.mark.timeout(240)
def test_a_short_soak_through_one_controller_loses_and_reorders_nothing_and_reports_its_memory(tmp_path):
    out = tmp_path / "soak.json"
    assert bench_soak.main(["--migrations", "100", "--window", "5", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    totals, memory = result["totals"], result["controller_memory"]
    print("SOAK", json.dumps({"totals": totals, "memory": memory}))
    assert result["stopped_by"] == "--migrations" and totals["migrations"] >= 100
    assert totals["packets_lost_elsewhere"] == 0 and totals["packets_dropped_by_sockets"] == 0
    assert totals["migrated_flows_packets_reordered_after_setup"] == 0
    assert totals["unmigrated_flows_packets_reordered_after_setup"] == 0
    assert sum(r["packets_sent"] for r in result["rounds"]) == totals["packets_sent"] > 0
    assert memory["samples"] >= 3 and 0 < memory["rss_mib_start"] <= memory["rss_mib_max"]
