"""The testbed's dataplane: Mininet NF clusters behind Open vSwitch on the userspace datapath, the NF
instances and their control channel, and the frames, packet sockets and process lifecycle that the NFs
and the trace replay's sender and sink share."""
