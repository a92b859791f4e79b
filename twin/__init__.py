"""The digital twin: the one cluster state (its flows named by `twin.flow.FlowKey`) and cost model of the
project."""
