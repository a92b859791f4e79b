"""The parts of the synthetic LBNL/ICSI-like trace that `trace_replay.generate` composes.

`mix` (the application classes and their parameters), `network` (hosts, subnets, server pools,
ephemeral ports), `sessions` (session arrivals, flows and their paths), `packets` (flows to blocks,
timeline and packet fields), `encode` (packets to libpcap bytes); `wire` holds the header sizes,
protocol numbers and TCP flags they share, `distributions` and `ragged` the vectorised draws and
grouped-array helpers.
"""
