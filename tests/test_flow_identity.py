"""twin.flow: the one flow identity (FlowKey), its flow id and its conversions, including agreement
with the vectorised keys by which trace_replay.flows groups a trace."""
from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import five_tuples
from trace_replay.flows import flow_identities, flow_keys
from trace_replay.pcap import AddressBook
from twin.flow import FIVE_TUPLE_DTYPE, FiveTuple, FlowIdError, FlowKey


def test_canonical_key_is_direction_free_and_orders_endpoints_like_the_flow_table():
    client, server = "10.1.0.9", "10.1.0.2"
    assert FlowKey.of(client, server, 40000, 80, 6) == FlowKey.of(server, client, 80, 40000, 6)
    assert FlowKey.of(client, server, 40000, 80, 6) == (server, client, 80, 40000, 6)  # 10.1.0.2 is lower
    assert FlowKey.of("10.0.0.1", "10.0.0.1", 9, 5, 17) == ("10.0.0.1", "10.0.0.1", 5, 9, 17)


def test_flow_ids_keep_the_ipv4_form_and_bracket_ipv6():
    assert FlowKey.of("10.0.0.9", "10.0.0.1", 80, 40000, 6).id == "10.0.0.1:40000-10.0.0.9:80/6"
    key = FlowKey.of("2001:DB8::9", "2001:db8:0::1", 443, 50000, 17)
    assert key == ("2001:db8::1", "2001:db8::9", 50000, 443, 17)  # addresses in their compressed form
    assert key.id == "[2001:db8::1]:50000-[2001:db8::9]:443/17"


@given(five_tuples())
def test_the_key_is_direction_free_and_idempotent(packet: FiveTuple):
    key = FlowKey.of(*packet)
    assert FlowKey.of(*packet.reverse()) == key
    assert FlowKey.of(*key) == key
    assert FlowKey.of(*key.a_to_b.reverse()) == key
    low, high = sorted(((int(ipaddress.ip_address(ip)), port) for ip, port in
                        ((packet.src_ip, packet.src_port), (packet.dst_ip, packet.dst_port))))
    assert (int(ipaddress.ip_address(key.ip_a)), key.port_a) == low
    assert (int(ipaddress.ip_address(key.ip_b)), key.port_b) == high


@given(five_tuples())
def test_the_flow_id_round_trips(packet: FiveTuple):
    key = FlowKey.of(*packet)
    assert FlowKey.parse(key.id) == key
    assert FlowKey.parse(key.id).id == key.id


@given(five_tuples(version=4))
def test_packed_addresses_name_the_same_flow(packet: FiveTuple):
    packed = [ipaddress.ip_address(ip).packed for ip in packet[:2]]
    assert FlowKey.of(*packed, *packet[2:]) == FlowKey.of(*packet)


@given(st.lists(five_tuples(), min_size=1, max_size=50))
def test_trace_keys_decode_to_the_same_flow_identity(packets: list[FiveTuple]):
    records = np.array([packet.to_record() for packet in packets], FIVE_TUPLE_DTYPE)
    addresses = AddressBook()  # numbers the IPv6 addresses
    assert flow_identities(*flow_keys(records, addresses), addresses) == [FlowKey.of(*packet) for packet in packets]
    # One key per flow in both forms: equal uint64 pairs exactly where the FlowKeys are equal.
    pairs = list(zip(*(half.tolist() for half in flow_keys(records, addresses))))
    keys = [FlowKey.of(*packet) for packet in packets]
    assert [[a == b for b in pairs] for a in pairs] == [[a == b for b in keys] for a in keys]


@given(five_tuples(version=4), five_tuples(version=6))
def test_records_round_trip_and_refuse_mixed_versions(packet: FiveTuple, packet6: FiveTuple):
    for each in (packet, packet6):
        record = np.array([each.to_record()], FIVE_TUPLE_DTYPE)[0]
        assert FiveTuple.from_record(record) == each
    with pytest.raises(FlowIdError, match="one IP version"):
        FiveTuple("::1", packet.dst_ip, *packet[2:]).to_record()


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (("10.0.0.1", "10.0.0.300", 1, 2, 6), "'10.0.0.300' is not an IP address"),
        (("10.0.0.1", "::1", 1, 2, 6), "of one IP version"),
        (("10.0.0.1", "10.0.0.2", 1, 70000, 6), "port 70000 is not an integer in 0..65535"),
        (("10.0.0.1", "10.0.0.2", True, 2, 6), "port True"),
        (("10.0.0.1", "10.0.0.2", 1, 2, 256), "protocol 256"),
        (("fe80::1%eth0", "fe80::2", 1, 2, 6), "has a scope"),
    ],
)
def test_fields_that_name_no_flow_are_refused(fields, error):
    with pytest.raises(FlowIdError, match=error):
        FlowKey.of(*fields)


@pytest.mark.parametrize(
    "text",
    ["10.0.0.1:1-10.0.0.2:2", "10.0.0.1:1-10.0.0.2/6", "[10.0.0.1]:1-[10.0.0.2]:2/6", "::1:1-::2:2/6",
     "10.0.0.1:x-10.0.0.2:2/6", "10.0.0.1:1-10.0.0.2:2/tcp", "10.0.0.1:1-10.0.0.2:99999/6"],
)
def test_strings_that_are_no_flow_id_are_refused(text):
    with pytest.raises(FlowIdError):
        FlowKey.parse(text)


def test_numpy_integers_are_taken_as_plain_integers():
    key = FlowKey.of("10.0.0.1", "10.0.0.2", np.uint16(1), np.uint16(2), np.uint8(6))
    assert key == ("10.0.0.1", "10.0.0.2", 1, 2, 6) and type(key.port_a) is int
