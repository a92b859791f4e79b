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
