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
