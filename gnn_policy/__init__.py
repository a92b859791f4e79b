"""Migration policies over the shared cluster state: the graph-network agent and its baselines."""
