"""Mininet testbeds for NF clusters behind Open vSwitch on the userspace datapath."""
