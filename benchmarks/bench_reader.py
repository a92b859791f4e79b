"""Throughput of trace_replay.flows.read_flows on a large header-only trace, gzip'ed and not.

    python benchmarks/bench_reader.py                  # writes a 5M-packet trace under /tmp
    python benchmarks/bench_reader.py --pcap big.pcap  # times an existing trace (and a gzip'ed copy)

The synthetic trace resembles an enterprise capture cut at 68 bytes: Ethernet/IPv4, mostly TCP
(data segments and 60-byte ACKs in both directions), some UDP and ICMP, heavy-tailed flow sizes.
It is written with numpy directly, since a per-packet writer would dwarf the reader under test.
"""

from __future__ import annotations

import argparse
import os
import platform
import struct
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from trace_replay.flows import read_flows

SNAPLEN = 68
_RECORD = np.dtype(  # record header and the frame's first 54 bytes (Ethernet, IPv4, TCP or UDP ports)
    {
        "names": [
            "ts_sec",
            "ts_usec",
            "caplen",
            "orig_len",
            "ethertype",
            "version_ihl",
            "ip_len",
            "flags",
            "ttl",
            "proto",
            "src",
            "dst",
            "src_port",
            "dst_port",
            "tcp_offset",
            "tcp_flags",
            "window",
        ],
        "formats": [
            "<u4",
            "<u4",
            "<u4",
            "<u4",
            ">u2",
            "u1",
            ">u2",
            ">u2",
            "u1",
            "u1",
            ">u4",
            ">u4",
            ">u2",
            ">u2",
            "u1",
            "u1",
            ">u2",
        ],
        "offsets": [0, 4, 8, 12, 28, 30, 32, 36, 38, 39, 42, 46, 50, 52, 62, 63, 64],
        "itemsize": 70,
    }
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pcap", type=Path, help="an existing uncompressed trace to time instead of a synthetic one"
    )
    parser.add_argument("--packets", type=int, default=5_000_000, help="size of the synthetic trace")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per file")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "dm-bench-reader")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    plain = args.pcap or args.workdir / f"synthetic-{args.packets}.pcap"
    if not plain.exists():
        print(f"writing {plain} ...", flush=True)
        write_synthetic_trace(plain, args.packets, seed=1)
    compressed = args.workdir / f"{plain.name}.gz"
    if not compressed.exists():
        print(f"compressing to {compressed} ...", flush=True)
        gzip_file(plain, compressed)

    print(
        f"machine: {cpu_model()}; platform.processor()={platform.processor()!r}; "
        f"{os.cpu_count()} logical CPUs; Python {platform.python_version()}, numpy {np.__version__}"
    )
    for path in (plain, compressed):
        runs = [timed_read(path) for _ in range(args.repeat)]
        table = runs[0][1]
        packets = table.stats.packets
        rates = sorted(packets / seconds for seconds, _ in runs)
        print(
            f"{path.name}: {path.stat().st_size / 2**20:,.0f} MiB, {packets:,} packets, "
            f"{len(table):,} flows; "
            f"{args.repeat} runs: worst {rates[0]:,.0f}, median {rates[len(rates) // 2]:,.0f}, "
            f"best {rates[-1]:,.0f} packets/s"
        )


def timed_read(path: Path):
    start = time.perf_counter()
    table = read_flows(path)
    return time.perf_counter() - start, table


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def gzip_file(source: Path, target: Path) -> None:
    """gzip at the default level 6, as published traces usually are."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        deflater = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        while block := src.read(16 << 20):
            dst.write(deflater.compress(block))
        dst.write(deflater.flush())


def write_synthetic_trace(path: Path, packets: int, *, seed: int, chunk: int = 1_000_000) -> None:
    rng = np.random.default_rng(seed)
    flow_count = max(1, packets // 10)
    client = rng.integers(0x0A000000, 0x0A00FFFF, flow_count, dtype=np.uint32)  # 10.0/16 hosts
    server = rng.choice(rng.integers(0x83F30000, 0x83F3FFFF, 2000, dtype=np.uint32), flow_count)
    client_port = rng.integers(1024, 65535, flow_count, dtype=np.uint16)
    server_port = rng.choice(
        np.array([80, 443, 22, 25, 139, 445, 53, 123], np.uint16),
        flow_count,
        p=[0.35, 0.3, 0.05, 0.05, 0.05, 0.05, 0.1, 0.05],
    )
    proto = np.where(np.isin(server_port, (53, 123)), 17, 6).astype(np.uint8)
    proto[rng.random(flow_count) < 0.02] = 1
    popularity = rng.pareto(1.2, flow_count) + 1  # heavy-tailed flow sizes

    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, 1))
        for start in range(0, packets, chunk):
            n = min(chunk, packets - start)
            flow = rng.choice(flow_count, n, p=popularity / popularity.sum())
            microseconds = (
                1_100_000_000 * 10**6 + (start + np.arange(n, dtype=np.int64)) * 100
            )  # 10,000 packets/s
            reply = rng.random(n) < 0.45
            is_ack = (proto[flow] == 6) & (rng.random(n) < 0.4)
            orig = np.where(is_ack, 60, rng.integers(60, 1515, n)).astype(np.uint32)
            caplen = np.minimum(orig, SNAPLEN)
            size = 16 + caplen.astype(np.int64)
            offsets = np.concatenate(([0], np.cumsum(size)[:-1]))
            records = np.zeros(n, _RECORD)
            records["ts_sec"], records["ts_usec"] = np.divmod(microseconds, 10**6)
            records["caplen"], records["orig_len"] = caplen, orig
            records["ethertype"], records["version_ihl"], records["ip_len"] = (
                0x0800,
                0x45,
                np.where(is_ack, 40, orig - 14),
            )
            records["flags"], records["ttl"], records["proto"] = 0x4000, 64, proto[flow]
            records["src"] = np.where(reply, server[flow], client[flow])
            records["dst"] = np.where(reply, client[flow], server[flow])
            ported = proto[flow] != 1
            records["src_port"] = np.where(ported, np.where(reply, server_port[flow], client_port[flow]), 0)
            records["dst_port"] = np.where(ported, np.where(reply, client_port[flow], server_port[flow]), 0)
            records["tcp_offset"] = np.where(proto[flow] == 6, 0x50, 0)
            records["tcp_flags"] = np.where(proto[flow] == 6, 0x10, 0)
            records["window"] = np.where(proto[flow] == 6, 65535, 0)
            buffer = bytearray(int(size.sum()))
            np.ndarray((len(buffer) - _RECORD.itemsize + 1,), _RECORD, buffer, strides=(1,))[offsets] = (
                records
            )
            out.write(buffer)


if __name__ == "__main__":
    main()
