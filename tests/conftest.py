"""Shared fixtures."""

import os

import pytest


@pytest.fixture(scope="session")
def ovs() -> None:
    """Open vSwitch daemons running for the session; skips unless root, which Mininet needs."""
    if os.geteuid() != 0:
        pytest.skip("needs root: Mininet creates network namespaces and OVS bridges")
    from mininet_topos.testbed import ensure_ovs_running  # imports Mininet, so only when needed

    ensure_ovs_running()


@pytest.fixture
def rig(tmp_path):
    """A switch-less controller over a fake switch and fake NFs (tests/controller_rig.py)."""
    from tests.controller_rig import make_rig  # imports the controller, so only when needed

    return make_rig(tmp_path)
