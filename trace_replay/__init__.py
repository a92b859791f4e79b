"""Trace pipeline: LBNL/ICSI-style pcap reading, flow grouping, trace generation and scenario building."""
