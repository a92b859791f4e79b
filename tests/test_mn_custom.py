"""`mn --custom mininet_topos/nf_cluster.py` runs the file with the system Python, outside the project's
virtual environment (docs/testbed.md): it must load there and offer the `nfcluster` topology."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SYSTEM_PYTHON = Path("/usr/bin/python3")
CLUSTER_FILE = Path(__file__).resolve().parent.parent / "mininet_topos" / "nf_cluster.py"

# What /usr/bin/mn does with --custom FILE: exec the file in a fresh namespace, then read `topos` from it.
MN_CUSTOM = """
import sys
customs = {}
exec(compile(open(sys.argv[1]).read(), sys.argv[1], "exec"), customs, customs)
topo = customs["topos"]["nfcluster"](3, 1)
print(len(topo.hosts()), len(topo.switches()))
"""


@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="no system Python (setup installs Debian's mininet for it)")
def test_the_cluster_topology_loads_the_way_mn_custom_loads_it(tmp_path):
    done = subprocess.run([str(SYSTEM_PYTHON), "-c", MN_CUSTOM, str(CLUSTER_FILE)], check=False, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    hosts, switches = map(int, done.stdout.split())
    assert (hosts, switches) == (2 + 3 + 1, 1)  # src, sink, 3 active and 1 standby NF
