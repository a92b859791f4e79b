"""The NF instance and its control channel, without Mininet: frames are handed to the NF directly and
the channel runs on a Unix socket in a temporary directory."""

import ipaddress
import json
import socket
import threading
import time

import numpy as np
import pytest

from mininet_topos.frames import CONTROLLER_PATH_DSCP, build_frame, parse_frame
from mininet_topos.nf_channel import ChannelServer, NFClient, NFError
from mininet_topos.nf_instance import NetworkFunction
from trace_replay.live import SinkCounters, paced
from twin.flow import FlowKey

pytestmark = pytest.mark.timeout(30)

MAC = bytes.fromhex("020000000001")
CLIENT, SERVER, OTHER = "10.1.0.9", "10.1.0.2", "10.1.0.7"
FLOW_A = FlowKey.of(CLIENT, SERVER, 40000, 80, 6)
FLOW_B = FlowKey.of(OTHER, SERVER, 53000, 53, 17)


def frame(src: str, dst: str, sport: int, dport: int, proto: int, sequence: int, flow_id: int = 0) -> bytes:
    return build_frame(
        MAC,
        int(ipaddress.IPv4Address(src)),
        int(ipaddress.IPv4Address(dst)),
        sport,
        dport,
        proto,
        100,
        flow_id,
        sequence,
        0,
    )


def a(sequence: int, *, reply: bool = False) -> bytes:
    """A frame of flow A, client to server or (reply) back."""
    return (
        frame(SERVER, CLIENT, 80, 40000, 6, sequence)
        if reply
        else frame(CLIENT, SERVER, 40000, 80, 6, sequence)
    )


def b(sequence: int) -> bytes:
    return frame(OTHER, SERVER, 53000, 53, 17, sequence, flow_id=1)


class Outbox:
    """The NF's `send`: collects forwarded frames and lets a test wait for them."""

    def __init__(self):
        self.frames: list[bytes] = []
        self._arrived = threading.Condition()

    def __call__(self, data: bytes) -> None:
        with self._arrived:
            self.frames.append(data)
            self._arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[bytes]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.frames) >= count, timeout), (
                f"{len(self.frames)} of {count} frames forwarded"
            )
            return list(self.frames)

    def sequences(self) -> list[tuple[tuple, int]]:
        """(flow key, sequence number) of each forwarded frame, in order."""
        result = []
        for data in self.frames:
            parsed = parse_frame(data)
            result.append((parsed.key, parsed.stamp(data)[1]))
        return result


def make_nf(outbox: Outbox, **options) -> NetworkFunction:
    settings = {"capacity_pps": 2000, "buffer_packets": 50, "processing_ms": 1, "active": True} | options
    return NetworkFunction("nf1", send=outbox, **settings)


def flow_state(nf: NetworkFunction, key) -> dict | None:
    return next((flow for flow in nf.report()["flows"] if tuple(flow["key"]) == key), None)


def test_frames_are_forwarded_unchanged_and_state_counts_both_directions():
    outbox = Outbox()
    nf = make_nf(outbox)
    sent = [a(0), a(1, reply=True), b(0), a(2)]
    with nf.running():
        for data in sent:
            nf.receive(data)
        assert outbox.wait_for(4) == sent
    state = flow_state(nf, FLOW_A)
    assert state["packets"] == 3 and state["bytes"] == 3 * len(sent[0])
    assert state["first_seen"] <= state["last_seen"]
    report = nf.report()
    assert (report["received"], report["processed"], report["forwarded"], report["dropped"]) == (4, 4, 4, 0)


def test_non_ipv4_frames_are_ignored():
    nf = make_nf(Outbox())
    nf.receive(bytes(14) + b"\x86\xdd" + bytes(60))
    assert (nf.ignored, nf.received) == (1, 0)


def test_full_buffer_drops_and_capacity_paces_the_processor():
    outbox = Outbox()
    nf = make_nf(outbox, capacity_pps=100, buffer_packets=10)
    for sequence in range(15):  # processor not running yet: everything queues
        nf.receive(a(sequence))
    assert (nf.report()["queue_packets"], nf.dropped) == (10, 5)
    started = time.monotonic()
    with nf.running():
        outbox.wait_for(10)
    assert time.monotonic() - started >= 9 / 100  # one frame per 10 ms
    assert [sequence for _key, sequence in outbox.sequences()] == list(range(10))


def test_held_flow_waits_counts_against_the_buffer_and_is_released_in_order():
    outbox = Outbox()
    nf = make_nf(outbox, buffer_packets=4)
    nf.hold(FLOW_A)
    for data in (a(0), b(0), a(1, reply=True), b(1), a(2)):
        nf.receive(data)
    report = nf.report()
    assert report["held"] == [list(FLOW_A)]
    assert (report["queue_packets"], report["dropped"]) == (4, 1)  # two held, two queued; a(2) dropped
    with nf.running():
        outbox.wait_for(2)
        time.sleep(0.05)
        assert [key for key, _ in outbox.sequences()] == [FLOW_B, FLOW_B]
        assert nf.report()["queue_packets"] == 2  # the held frames still occupy the buffer
        assert nf.release(FLOW_A) == {"key": list(FLOW_A), "released": 2}
        nf.receive(a(3))
        outbox.wait_for(5)
    assert [sequence for key, sequence in outbox.sequences() if key == FLOW_A] == [0, 1, 3]


def test_inactive_instance_drops_new_frames_but_accepts_held_ones():
    outbox = Outbox()
    nf = make_nf(outbox, active=False)
    with nf.running():
        nf.receive(b(0))
        nf.hold(FLOW_A)
        nf.receive(a(0))
        nf.release(FLOW_A)
        outbox.wait_for(1)
        nf.set_active(True)
        nf.receive(b(1))
        outbox.wait_for(2)
    assert nf.dropped == 1
    assert outbox.sequences() == [(FLOW_A, 0), (FLOW_B, 1)]


def test_export_waits_for_the_flow_to_drain_then_moves_its_state():
    outbox = Outbox()
    source = make_nf(outbox, capacity_pps=50)
    destination = make_nf(Outbox())
    with source.running():
        for sequence in range(5):
            source.receive(a(sequence))
        exported = source.export(FLOW_A, quiet_ms=20, timeout_ms=2000)
        assert len(outbox.frames) == 5  # all five left before the export returned
    assert exported["state"]["packets"] == 5
    assert flow_state(source, FLOW_A) is None
    destination.import_(FLOW_A, exported["state"])
    assert destination.import_(FLOW_A, exported["state"]) == {"key": list(FLOW_A), "duplicate": True}  # once
    assert flow_state(destination, FLOW_A)["packets"] == 5
    by_hand = {name: exported["state"][name] for name in ("packets", "bytes", "first_seen", "last_seen")}
    destination.import_(FLOW_A, by_hand)  # a state without a transfer id merges (sums) every time
    assert flow_state(destination, FLOW_A)["packets"] == 10
    assert source.export(FLOW_B, quiet_ms=0, timeout_ms=10) == {"key": list(FLOW_B), "state": None}


def test_an_exported_state_is_kept_until_acknowledged_and_taken_back_by_its_exporter():
    """The exporter keeps each state it hands over (and reports it) until the import is acknowledged, so a
    controller that dies between export and import loses nothing; a rolled-back move imports it back."""
    source, destination = make_nf(Outbox()), make_nf(Outbox())
    with source.running():
        source.receive(a(0))
        source.receive(a(1))
        time.sleep(0.1)
        first = source.export(FLOW_A, quiet_ms=0, timeout_ms=2000)["state"]
    [kept] = source.report()["exported"]
    assert kept == {"key": list(FLOW_A), "state": first} and flow_state(source, FLOW_A) is None
    source.import_(FLOW_A, first)  # the move rolled back: the state comes home, the copy is dropped
    assert flow_state(source, FLOW_A)["packets"] == 2 and source.report()["exported"] == []
    second = source.export(FLOW_A, quiet_ms=0, timeout_ms=10)["state"]
    assert second["transfer"] != first["transfer"] and second["transfers"] == [first["transfer"]]
    destination.import_(FLOW_A, second)
    assert source.acknowledge(FLOW_A, second["transfer"]) == {"key": list(FLOW_A), "acknowledged": True}
    assert source.report()["exported"] == [] and not source.acknowledge(FLOW_A, "unknown")["acknowledged"]
    with pytest.raises(ValueError, match="transfer must be"):
        source.acknowledge(FLOW_A, 7)
    # the destination now holds the state with both transfers' ids: either one imported again counts once
    assert destination.import_(FLOW_A, first)["duplicate"] and flow_state(destination, FLOW_A)["packets"] == 2


def test_export_of_a_busy_flow_times_out_and_keeps_its_state():
    source = make_nf(Outbox(), capacity_pps=10)
    with source.running():
        for sequence in range(5):
            source.receive(a(sequence))
        with pytest.raises(ValueError, match="not drained after 100 ms: [1-5] frames inside"):
            source.export(FLOW_A, quiet_ms=0, timeout_ms=100)
        time.sleep(0.15)
        assert flow_state(source, FLOW_A)["packets"] >= 1


@pytest.fixture
def channel(tmp_path):
    """An NF served on a Unix socket, and a client of it."""
    nf = make_nf(Outbox())
    path = tmp_path / "nf1.sock"
    with nf.running(), ChannelServer(path, nf.handle), NFClient(path, timeout=2) as client:
        yield nf, client


def test_client_runs_a_migration_over_the_channel(channel, tmp_path):
    nf, client = channel
    other = make_nf(Outbox())
    with (
        other.running(),
        ChannelServer(tmp_path / "nf2.sock", other.handle),
        NFClient(tmp_path / "nf2.sock") as dst,
    ):
        nf.receive(a(0))
        nf.receive(a(1, reply=True))
        reversed_key = [CLIENT, SERVER, 40000, 80, 6]  # keys are accepted in either direction
        assert dst.hold(reversed_key) == {"key": list(FLOW_A)}
        other.receive(a(2))
        state = client.export(reversed_key, quiet_ms=10)
        assert state["packets"] == 2
        dst.import_(FLOW_A, state)
        assert dst.release(FLOW_A) == {"key": list(FLOW_A), "released": 1}
        deadline = time.monotonic() + 2
        while dst.report()["processed"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        [flow] = dst.report()["flows"]
    assert flow["key"] == list(FLOW_A) and flow["packets"] == 3
    assert client.report()["flows"] == []


def test_report_has_the_documented_fields(channel):
    _nf, client = channel
    report = client.report()
    assert set(report) >= {
        "instance",
        "time",
        "capacity_pps",
        "buffer_packets",
        "queue_packets",
        "received",
        "processed",
        "dropped",
        "active",
        "flows",
        "queued",
    }
    assert client.deactivate() == {"active": False} and client.report()["active"] is False
    assert client.activate() == {"active": True}


@pytest.mark.parametrize(
    ("request_line", "error"),
    [
        (b"{not json\n", "not JSON"),
        (b"[1, 2]\n", 'string "op"'),
        (b'{"op": "dance"}\n', "unknown op 'dance'"),
        (b'{"op": "hold", "key": ["10.0.0.1", "10.0.0.2", 1, 2]}\n', "a flow key is a list"),
        (
            b'{"op": "hold", "key": ["10.0.0.1", "10.0.0.300", 1, 2, 6]}\n',
            "'10.0.0.300' is not an IP address",
        ),
        (b'{"op": "hold", "key": ["10.0.0.1", "10.0.0.2", 1, 70000, 6]}\n', "port 70000"),
        (b'{"op": "hold", "key": ["10.0.0.1", "::1", 1, 2, 6]}\n', "of one IP version"),
        (b'{"op": "release", "key": ["10.0.0.1", "10.0.0.2", 1, 2, 6]}\n', "is not held"),
        (b'{"op": "export", "key": ["10.0.0.1", "10.0.0.2", 1, 2, 6], "quiet_ms": -1}\n', "quiet_ms must be"),
        (
            b'{"op": "import", "key": ["10.0.0.1", "10.0.0.2", 1, 2, 6], "state": {"packets": 1}}\n',
            "flow state must",
        ),
    ],
)
def test_bad_requests_get_an_error_and_the_connection_stays_usable(channel, request_line, error):
    _nf, client = channel
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(2)
        raw.connect(client.path)
        stream = raw.makefile("rwb")
        stream.write(request_line)
        stream.flush()
        answer = json.loads(stream.readline())
        assert answer["ok"] is False and error in answer["error"]
        stream.write(b'{"op": "report"}\n')
        stream.flush()
        assert json.loads(stream.readline())["ok"] is True


def test_client_raises_nf_errors_and_reconnects_after_the_server_restarts(tmp_path):
    nf = make_nf(Outbox())
    path = tmp_path / "nf.sock"
    client = NFClient(path, timeout=2)
    with pytest.raises(ConnectionError, match="cannot reach the NF control socket"):
        client.report()
    with ChannelServer(path, nf.handle):
        with pytest.raises(NFError, match="release failed .* is not held"):
            client.release(FLOW_A)
        client.shutdown()
        assert nf.shutdown_requested.is_set()
    with ChannelServer(path, nf.handle):
        with pytest.raises(ConnectionError):  # the old connection closed with the old server
            client.report()
        assert client.report()["instance"] == "nf1"
    client.close()


def test_socket_path_too_long_is_refused(tmp_path):
    with pytest.raises(ValueError, match="longer than 107 bytes"):
        NFClient(tmp_path / ("x" * 120))


def test_pacing_spreads_a_burst_at_the_line_rate_in_order_and_leaves_sparse_packets_alone():
    burst_then_sparse = np.array([0.0, 0.0001, 0.0002, 0.0003, 1.0, 2.0])
    sent = paced(burst_then_sparse, rate_pps=1000.0)
    assert np.allclose(sent, [0.0, 0.001, 0.002, 0.003, 1.0, 2.0])
    assert np.all(np.diff(sent) >= 0.001 - 1e-12)


def test_sink_counts_reordering_per_direction_and_tells_controller_forwarded_frames_apart():
    a, b = int(ipaddress.IPv4Address("10.1.0.1")), int(ipaddress.IPv4Address("10.2.0.2"))

    def frame(sequence: int, forward: bool, via_controller: bool = False) -> bytes:
        ends = (a, b, 1000, 80) if forward else (b, a, 80, 1000)
        data = bytearray(build_frame(b"\x02" * 6, ends[0], ends[1], ends[2], ends[3], 6, 100, 7, sequence, 0))
        if via_controller:
            data[15] = CONTROLLER_PATH_DSCP << 2  # the IPv4 ToS byte, as the controller's packet-out sets it
        return bytes(data)

    sink = SinkCounters()
    # The reverse frame 1 arriving after forward frame 2 is no reordering: directions are ordered apart.
    for data in (frame(0, True), frame(2, True), frame(1, False), frame(3, False),
                 frame(1, True, via_controller=True), frame(2, False)):
        sink.count(data, 0)
    counts = sink.snapshot()
    assert (counts["received"], counts["reordered"], counts["reordered_at_setup"]) == (6, 2, 1)


def test_sink_averages_each_flows_one_way_delays_per_second_of_arrival():
    a, b = int(ipaddress.IPv4Address("10.1.0.1")), int(ipaddress.IPv4Address("10.2.0.2"))
    second = 1_700_000_000 * 10**9  # bins are whole seconds of arrival time (CLOCK_REALTIME, ns)
    ms = 10**6

    def stamped(flow_id: int, sequence: int, sent_ns: int, forward: bool = True) -> bytes:
        ends = (a, b, 1000 + flow_id, 80) if forward else (b, a, 80, 1000 + flow_id)
        return build_frame(b"\x02" * 6, *ends, 17, 100, flow_id, sequence, sent_ns)

    sink = SinkCounters()
    # flow 0: 2 ms and 4 ms (the reply) in the first second, 30 ms in the next; flow 1: 7 ms, a second later.
    arrivals = [(stamped(0, 0, second + 100 * ms), second + 102 * ms),
                (stamped(0, 1, second + 500 * ms, forward=False), second + 504 * ms),
                (stamped(0, 2, second + 990 * ms), second + 1020 * ms),
                (stamped(1, 0, second + 2000 * ms), second + 2007 * ms)]
    for data, arrived_ns in arrivals:
        sink.count(data, arrived_ns)
    flows = sink.snapshot()["flows"]
    start = second / 1e9
    assert flows["0"]["delay_bins"] == [[start, 2, 3.0], [start + 1, 1, 30.0]]
    assert flows["1"]["delay_bins"] == [[start + 2, 1, 7.0]]
    assert flows["0"]["reordered"] == 0  # the reply is ordered apart from the forward direction


@pytest.mark.parametrize("extra", [{"transfer": 7}, {"transfers": 5}, {"transfers": "ab"}, {"transfers": [1]}])
def test_an_import_with_bad_transfer_ids_is_refused_by_name(extra):
    state = {"packets": 1, "bytes": 60, "first_seen": 1.0, "last_seen": 2.0, **extra}
    with pytest.raises(ValueError, match="transfer"):
        make_nf(Outbox()).import_(FLOW_A, state)


def test_a_flow_idle_longer_than_the_flow_idle_time_is_forgotten_and_comes_back_fresh():
    """Issue 20: an NF's report lists only flows seen within `flow_idle_s`, so it stops growing with every flow
    ever served; a flow that returns after it starts a new state, as at a real NF after its timeout."""
    outbox = Outbox()
    nf = make_nf(outbox, flow_idle_s=0.3)
    with nf.running():
        for data in (a(0), a(1, reply=True), b(0)):
            nf.receive(data)
        outbox.wait_for(3)
        time.sleep(0.2)
        nf.receive(b(1))  # B stays busy, A goes idle
        outbox.wait_for(4)
        time.sleep(0.15)
        report = nf.report()
        assert [tuple(f["key"]) for f in report["flows"]] == [FLOW_B]
        assert (report["forgotten"], report["flow_idle_s"]) == (1, 0.3)
        nf.receive(a(2))
        outbox.wait_for(5)
    assert flow_state(nf, FLOW_A)["packets"] == 1
    assert FLOW_A in nf._last_arrival and nf.forget_idle() == 0


def test_held_queued_and_imported_flows_are_not_idle():
    """A flow with frames inside the NF (processor stopped here) or held is kept however long ago its frames
    came, and looked at again a full idle time later; an imported state counts as activity."""
    nf = make_nf(Outbox(), flow_idle_s=0.5)
    nf.receive(a(0))
    nf.hold(FLOW_B)
    nf.receive(b(0))
    time.sleep(0.6)
    assert nf.forget_idle() == 0 and nf.report()["queue_packets"] == 2
    nf.release(FLOW_B)
    with nf.running():
        while nf.report()["queue_packets"] or nf._inside:
            time.sleep(0.01)
        time.sleep(0.3)
        other = FlowKey.of(CLIENT, SERVER, 40001, 80, 6)
        nf.import_(other, {"packets": 3, "bytes": 300, "first_seen": 1.0, "last_seen": 2.0})
        time.sleep(0.3)
        assert [tuple(f["key"]) for f in nf.report()["flows"]] == [other]
        time.sleep(0.3)
        assert nf.report()["flows"] == [] and nf.forgotten == 3
    assert not (nf._last_arrival or nf._last_sent or nf._touched)


def test_a_flow_idle_time_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="flow_idle_s"):
        make_nf(Outbox(), flow_idle_s=0)
