"""Throughput of the replay sink's per-packet work (trace_replay.live.SinkCounters.count), without a
network: the frames the sender builds, counted in a loop. The sink must keep up with the testbed's
peak rate (thousands of packets/s) on a core it shares, so this is the figure to watch when the
stamp or the sink's bookkeeping changes.

    python benchmarks/bench_sink.py --frames 200000 --flows 100
"""
from __future__ import annotations

import argparse
import ipaddress
import time

from mininet_topos.frames import IPPROTO_TCP, IPPROTO_UDP, build_frame
from trace_replay.live import SinkCounters

MAC = bytes.fromhex("020000000001")
CLIENT, SERVER = int(ipaddress.IPv4Address("10.8.0.1")), int(ipaddress.IPv4Address("192.168.9.9"))


def frames(n: int, flows: int) -> list[bytes]:
    """`n` frames of `flows` flows (TCP and UDP alternately, both directions), interleaved."""
    built = []
    for k in range(n):
        flow = k % flows
        port = 2000 + flow
        ends = (CLIENT, SERVER, port, 80) if k % 3 else (SERVER, CLIENT, 80, port)
        built.append(build_frame(MAC, *ends, (IPPROTO_TCP, IPPROTO_UDP)[flow % 2], 242, flow, k // flows,
                                 time.time_ns()))
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--flows", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5, help="best of this many runs (default 5)")
    args = parser.parse_args(argv)
    data = frames(args.frames, args.flows)
    best = float("inf")
    for _ in range(args.repeat):
        sink = SinkCounters()
        started = time.perf_counter()
        for frame in data:
            sink.count(frame, time.time_ns())  # as the sink's receive loop stamps each arrival
        best = min(best, time.perf_counter() - started)
        assert sink.snapshot()["received"] == args.frames
    print(f"sink: {args.frames} frames of {args.flows} flows in {best:.3f} s (best of {args.repeat}): "
          f"{args.frames / best:,.0f} frames/s, {best / args.frames * 1e6:.2f} us/frame")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
