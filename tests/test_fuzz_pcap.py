"""Hypothesis against the trace reader: mutated captures (classic pcap, pcapng, gzip'ed or not) are
either read, consistently, or refused with a PcapError naming the file; nothing else escapes and
nothing hangs."""
from __future__ import annotations

import functools
import gzip
import warnings

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trace_replay.flows as flows_module
from tests.pcap_builder import (
    Frame,
    ethernet,
    fragmented_udp,
    icmp,
    pcap_bytes,
    pcapng_bytes,
    tagged,
    tcp,
    tcp6,
    udp,
)
from trace_replay.flows import read_flows
from trace_replay.pcap import PcapError, PcapReader


def _frames() -> list[Frame]:
    frames = [
        Frame(1.0, ethernet(tcp("10.0.0.1", 40000, "10.0.0.2", 80, 100))),
        Frame(1.1, ethernet(tcp("10.0.0.2", 80, "10.0.0.1", 40000))),
        Frame(1.2, tagged(udp("10.0.0.3", 53, "10.0.0.1", 5353, 20), [(0x88A8, 5), (0x8100, 6)])),
        Frame(1.3, ethernet(icmp("10.0.0.1", "10.0.0.9"))),
        Frame(1.4, ethernet(tcp6("2001:db8::1", 1, "2001:db8::2", 2), ethertype=dpkt.ethernet.ETH_TYPE_IP6)),
        Frame(1.5, ethernet(bytes(28), ethertype=dpkt.ethernet.ETH_TYPE_ARP)),
    ]
    return frames + [Frame(1.6 + k * 0.01, ethernet(piece)) for k, piece in enumerate(fragmented_udp(9))]


CAPTURES = {"pcap": pcap_bytes(_frames(), snaplen=96), "pcapng": pcapng_bytes(_frames(), snaplen=96)}


@st.composite
def mutated(draw) -> bytes:
    """A capture with a few random edits: bytes overwritten, inserted or deleted, or the file cut."""
    data = bytearray(CAPTURES[draw(st.sampled_from(sorted(CAPTURES)))])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["overwrite", "insert", "delete", "cut"]))
        if edit == "overwrite":
            data[at : at + 4] = draw(st.binary(min_size=1, max_size=4))
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated(), compress=st.booleans(), batch_bytes=st.sampled_from([1 << 20, 64, 7]))
def test_mutated_captures_are_read_or_refused_with_a_pcap_error(directory, data, compress, batch_bytes):
    path = directory / "mutated.cap"
    path.write_bytes(gzip.compress(data) if compress else data)
    with warnings.catch_warnings(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(flows_module, "PcapReader", functools.partial(PcapReader, batch_bytes=batch_bytes))
        warnings.simplefilter("ignore")  # torn records and timestamps out of order are warned about
        try:
            table = read_flows(path)
        except PcapError as error:
            assert str(path) in str(error) and "byte" in str(error)
            return
    assert int(table.records["packets"].sum()) == table.stats.ip_packets <= table.stats.packets
    assert int(table.records["bytes"].sum()) == table.stats.bytes
