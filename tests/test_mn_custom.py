"""`mn --custom mininet_topos/nf_cluster.py` runs the file with the system Python, outside the project's
virtual environment (docs/testbed.md): it must load there and offer the `nfcluster` topology."""
from __future__ import annotations

import json
import os
import subprocess
import sys
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


# What else mn does with the file: every name it binds becomes a global of the mn script (MininetRunner.setCustom),
# so it must not replace one of mn's own (dunders aside, which mn does not read), except `CLI` (the cluster's CLI).
MN_GLOBALS = """
import importlib.machinery, importlib.util, json, sys
loader = importlib.machinery.SourceFileLoader("mn_script", "/usr/bin/mn")
spec = importlib.util.spec_from_loader("mn_script", loader)
mn = importlib.util.module_from_spec(spec)
loader.exec_module(mn)
customs = {}
exec(compile(open(sys.argv[1]).read(), sys.argv[1], "exec"), customs, customs)
replaced = sorted(name for name, value in customs.items()
                  if name in vars(mn) and vars(mn)[name] is not value and not name.startswith("__"))
print(json.dumps({"replaced": replaced, "cli": callable(customs.get("CLI"))}))
"""

# The CLI's first step: the project's virtual environment inside mn's interpreter, then the CLI module.
ENTER_PROJECT = """
import sys
customs = {}
exec(compile(open(sys.argv[1]).read(), sys.argv[1], "exec"), customs, customs)
python = customs["enter_project_environment"]()
from mininet_topos.by_hand import NFClusterCLI
import numpy
print(python, NFClusterCLI.__module__)
"""


@pytest.mark.skipif(not Path("/usr/bin/mn").exists(), reason="no mn (setup installs Debian's mininet)")
def test_the_custom_file_hands_mn_its_cli_and_replaces_none_of_mns_names(tmp_path):
    done = subprocess.run([str(SYSTEM_PYTHON), "-c", MN_GLOBALS, str(CLUSTER_FILE)], check=False, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"replaced": ["CLI"], "cli": True}


@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="no system Python (setup installs Debian's mininet for it)")
def test_the_cli_enters_the_project_environment_from_the_system_python(tmp_path):
    env = {**os.environ, "DEEPMIGRATION_VENV": sys.prefix}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(SYSTEM_PYTHON), "-c", ENTER_PROJECT, str(CLUSTER_FILE)], check=False, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(Path(sys.prefix) / "bin" / "python"), "mininet_topos.by_hand"]
