"""Ryu OpenFlow application: collects NF load and link statistics, steers flows and executes migrations."""
