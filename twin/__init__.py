"""The digital twin: the one cluster state and cost model of the project."""
