"""What Open vSwitch does to a rule's idle clock when the rule is replaced, which `OpenFlowSwitch.steer` relies
on (controller_app/app.py): an add over an existing rule keeps the replaced rule's last-used time, so a moved
flow that had been idle for most of the idle timeout loses its new rules at once; a delete and an add in one
atomic bundle give the new rule a fresh idle timeout."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

pytestmark = [pytest.mark.network, pytest.mark.timeout(60), pytest.mark.usefixtures("ovs")]

IDLE_S = 4
MATCH = "priority=100,ip,in_port=1,nw_src=10.0.0.{a},nw_dst=10.0.0.{b}"


def ofctl(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(["ovs-ofctl", *args], input=stdin, capture_output=True, text=True, check=True).stdout


def test_an_add_keeps_the_replaced_rules_idle_clock_and_a_bundled_delete_and_add_does_not():
    bridge = f"dmidle{os.getpid() % 100000}"
    subprocess.run(["ovs-vsctl", "--may-exist", "add-br", bridge, "--", "set", "bridge", bridge,
                    "datapath_type=netdev", "protocols=OpenFlow13,OpenFlow14"], check=True)
    try:
        replaced, bundled = MATCH.format(a=1, b=2), MATCH.format(a=3, b=4)
        for match in (replaced, bundled):
            ofctl("-O", "OpenFlow13", "add-flow", bridge, f"{match},idle_timeout={IDLE_S},actions=output:2")
        time.sleep(IDLE_S - 1)  # both idle for 3 of their 4 s
        ofctl("-O", "OpenFlow13", "add-flow", bridge, f"{replaced},idle_timeout={IDLE_S},actions=output:3")
        ofctl("-O", "OpenFlow14", "--bundle", "add-flows", bridge, "-",
              stdin=f"delete_strict {bundled}\nadd {bundled},idle_timeout={IDLE_S},actions=output:3\n")
        time.sleep(2.5)  # the old clock ran out (OVS checks every second); a fresh one has 1.5 s left
        rules = ofctl("-O", "OpenFlow13", "dump-flows", bridge)
        assert "nw_src=10.0.0.1" not in rules, rules
        assert "nw_src=10.0.0.3" in rules and "actions=output:3" in rules, rules
    finally:
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", bridge], check=True)


def test_a_put_back_bundle_fails_whole_over_a_rule_to_another_port_and_replaces_one_to_its_own():
    """`OpenFlowSwitch.steer(..., unless_landed=True)` (issue 20, returning flows): a delete_strict limited to the
    instance's port and an add with check_overlap, in one atomic bundle. Over a rule to another port (the flow
    landed there: its `learn`ed rule) OVS refuses the bundle and the rule stays; over a rule to the same port
    or none, the bundle puts the rule there."""
    bridge = f"dmback{os.getpid() % 100000}"
    subprocess.run(["ovs-vsctl", "--may-exist", "add-br", bridge, "--", "set", "bridge", bridge,
                    "datapath_type=netdev", "protocols=OpenFlow13,OpenFlow14"], check=True)
    try:
        landed, own, gone = MATCH.format(a=1, b=2), MATCH.format(a=3, b=4), MATCH.format(a=5, b=6)
        ofctl("-O", "OpenFlow13", "add-flow", bridge, f"{landed},idle_timeout={IDLE_S},actions=output:2")
        ofctl("-O", "OpenFlow13", "add-flow", bridge, f"{own},idle_timeout={IDLE_S},actions=output:3")
        outcomes = {}
        for match in (landed, own, gone):
            bundle = (f"delete_strict {match},out_port=3\n"
                      f"add {match},idle_timeout={IDLE_S},check_overlap,send_flow_rem,actions=output:3\n")
            command = ["ovs-ofctl", "-O", "OpenFlow14", "--bundle", "add-flows", bridge, "-"]
            outcomes[match] = subprocess.run(command, input=bundle, capture_output=True, text=True,
                                             check=False).returncode
        rules = ofctl("-O", "OpenFlow13", "dump-flows", bridge)
        assert outcomes[landed] != 0 and outcomes[own] == 0 and outcomes[gone] == 0, (outcomes, rules)
        lines = {line.split("nw_src=")[1].split(",")[0]: line for line in rules.splitlines() if "nw_src=" in line}
        assert lines["10.0.0.1"].endswith("actions=output:2"), rules  # the landing stands
        assert lines["10.0.0.3"].endswith("actions=output:3") and lines["10.0.0.5"].endswith("actions=output:3")
    finally:
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", bridge], check=True)
