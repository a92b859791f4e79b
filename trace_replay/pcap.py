"""Streaming reader for libpcap traces such as the header-only LBNL/ICSI enterprise captures, classic
pcap or pcapng (converted to classic records on the fly by trace_replay._pcapng), optionally gzip'ed.

Speed comes from doing almost nothing per packet in Python: one minimal loop follows the caplen
fields of the 16-byte record headers (the only inherently sequential step), and every other field
of a whole chunk is gathered at once with numpy, as fixed-layout structures read at each record's
offset. Decompression and file reads run in a worker thread, where zlib and the OS release the
GIL, so they overlap parsing on a second core. Memory stays at a few chunks whatever the file size.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from trace_replay._errors import PcapError, TimestampsBackwardsWarning, TornRecordWarning, location
from trace_replay._pcapng import PcapngConverter
from trace_replay._streams import ReadAhead, coalesce, gzip_chunks, plain_chunks

DEFAULT_BATCH_BYTES = 8 << 20
"""Uncompressed bytes parsed per batch: large enough to amortise numpy's per-call overhead."""

LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113
LINKTYPES_RAW_IP = frozenset({12, 14, 101, 228})

L3_NON_IP, L3_IPV4, L3_IPV6, L3_IPV4_MALFORMED, L3_IPV6_MALFORMED = 0, 1, 2, 3, 4
"""Values of the `l3` field. Malformed IPv4 (IPv6): the link layer says IPv4 (IPv6) but the captured
bytes do not hold a valid header (wrong version, IPv4 header length below 20, or cut short by the snap
length)."""

PACKET_DTYPE = np.dtype(
    [
        ("ts", "<f8"),
        ("wire_len", "<u4"),
        ("src_ip", "<u4"),
        ("dst_ip", "<u4"),
        ("src_port", "<u2"),
        ("dst_port", "<u2"),
        ("proto", "u1"),
        ("l3", "u1"),
        ("is_ipv4", "?"),
        ("has_ports", "?"),
        ("is_ipv6", "?"),
    ]
)
"""One packet. IPv4 addresses are host-order integers in src_ip/dst_ip; an IPv6 packet (is_ipv6) has there
its addresses' numbers in the reader's AddressBook, which keeps the array as narrow (and as fast) as for
IPv4; proto, addresses and ports are 0 where absent. proto is the transport
protocol (IPv6: after any extension headers). has_ports: the packet's own TCP/UDP header was captured;
a later IPv4 fragment carries the ports of its datagram's first fragment (seen earlier in the file)
without one."""

_FILE_HEADER_LEN = 24
_RECORD_HEADER_LEN = 16
_MAX_SNAPLEN = 262_144  # libpcap's ceiling, applied when a header declares snaplen 0
_GZIP_MAGIC = b"\x1f\x8b"
_PCAP_MAGICS = {  # first four bytes -> (byte order, nanosecond timestamps)
    b"\xd4\xc3\xb2\xa1": ("<", False),
    b"\xa1\xb2\xc3\xd4": (">", False),
    b"\x4d\x3c\xb2\xa1": ("<", True),
    b"\xa1\xb2\x3c\x4d": (">", True),
}
_ETHERTYPE_IPV4, _ETHERTYPE_IPV6 = 0x0800, 0x86DD
_VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad (QinQ's service tag), the pre-standard QinQ tag
_IPPROTO_TCP, _IPPROTO_UDP = 6, 17
_IPV6_EXTENSIONS = (0, 43, 44, 51, 60)  # hop-by-hop, routing, fragment, AH, destination options
_IPV6_FRAGMENT, _IPV6_AH = 44, 51
_MAX_IPV6_EXTENSIONS = 4

# Fixed byte layouts read through stride-1 views of a chunk. The link-layer fields sit after the
# 16-byte record header; the IPv4 view assumes a 20-byte header for the ports (options are rare and
# fixed up separately).
_LINK_FIELDS = {
    LINKTYPE_ETHERNET: ([("eth_type", ">u2", 28), ("vlan_type", ">u2", 32), ("vlan2_type", ">u2", 36)], 38),
    LINKTYPE_LINUX_SLL: ([("sll_protocol", ">u2", 30)], 32),
    **{link: ([("ip_version", "u1", 16)], 17) for link in LINKTYPES_RAW_IP},
}
_IPV4_HEADER = np.dtype(
    {
        "names": ["version_ihl", "ident", "flags_fragment", "proto", "src", "dst", "src_port", "dst_port"],
        "formats": ["u1", ">u2", ">u2", "u1", ">u4", ">u4", ">u2", ">u2"],
        "offsets": [0, 4, 6, 9, 12, 16, 20, 22],
        "itemsize": 24,
    }
)
_IPV6_HEADER = np.dtype(
    {
        "names": ["version", "next_header", "src", "dst"],
        "formats": ["u1", "u1", "V16", "V16"],
        "offsets": [0, 6, 8, 24],
        "itemsize": 40,
    }
)
_IPV6_EXTENSION = np.dtype(
    {"names": ["next_header", "length", "fragment"], "formats": ["u1", "u1", ">u2"], "offsets": [0, 1, 2],
     "itemsize": 4}
)
_PORTS = np.dtype([("src_port", ">u2"), ("dst_port", ">u2")])
_PADDING = bytes(128)  # past the last record, so every fixed-layout view stays inside the buffer


@dataclass(frozen=True)
class PcapHeader:
    """What the reader takes from a pcap file header (and whether the file was gzip'ed)."""

    byte_order: str  # "<" or ">", as struct and numpy spell it
    nanosecond: bool
    version: tuple[int, int]
    snaplen: int
    link_type: int
    gzipped: bool


class AddressBook:
    """Numbers IPv6 addresses 0, 1, 2, ... in order of first sight, so that an IPv6 address fits where an
    IPv4 one goes (PACKET_DTYPE's src_ip/dst_ip, the uint64 flow keys of trace_replay.flows). Numbering
    goes per distinct address of a batch, so IPv6 costs little more than IPv4."""

    def __init__(self):
        self._numbers: dict[bytes, int] = {}
        self._addresses: list[bytes] = []

    def numbers(self, addresses: np.ndarray) -> np.ndarray:
        """The number of each address (V16: the 16 bytes in network order), new ones numbered next."""
        distinct, where = np.unique(addresses, return_inverse=True)
        numbers = np.empty(len(distinct), np.uint32)
        for k, address in enumerate(distinct.tolist()):
            number = self._numbers.get(address)
            if number is None:
                number = self._numbers[address] = len(self._addresses)
                self._addresses.append(address)
            numbers[k] = number
        return numbers[where.reshape(-1)]

    def packed(self, numbers: np.ndarray) -> np.ndarray:
        """The addresses (V16) of numbers."""
        return np.array([self._addresses[n] for n in numbers.tolist()], dtype="V16").reshape(len(numbers))

    def address(self, number: int) -> str:
        return str(ipaddress.IPv6Address(self._addresses[number]))


class PcapReader:
    """Iterates a pcap file (optionally gzip-compressed) as arrays of PACKET_DTYPE.

    Each array holds the records completed within about `batch_bytes` of (decompressed) file.
    `header` is set once iteration has read the file header (for pcapng, that of the classic stream it
    is converted to); `torn_records` (0 or 1) and `timestamps_backwards` (records whose timestamp is
    earlier than one before them: they stay in file order, and a TimestampsBackwardsWarning says how
    many there were) are final once iteration ends. IPv6 addresses are numbered in `addresses` (a fresh
    AddressBook unless one is given, as to read a trace again with the numbers of a flow table).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        progress: bool = False,
        addresses: AddressBook | None = None,
    ):
        if batch_bytes < 1:
            raise ValueError("batch_bytes must be positive")
        self.path = os.fspath(path)
        self.batch_bytes = batch_bytes
        self.progress = progress
        self.header: PcapHeader | None = None
        self.torn_records = 0
        self.timestamps_backwards = 0
        self.addresses = addresses if addresses is not None else AddressBook()

    def __iter__(self) -> Iterator[np.ndarray]:
        self.torn_records, self.timestamps_backwards, latest = 0, 0, -np.inf
        with open(self.path, "rb") as file:
            gzipped = file.read(2) == _GZIP_MAGIC
            file.seek(0)
            total = os.fstat(file.fileno()).st_size
            chunks = (gzip_chunks if gzipped else plain_chunks)(file, self.path, self.batch_bytes)
            pcapng = PcapngConverter(self.path, gzipped, frozenset(_LINK_FIELDS))
            with (
                ReadAhead(pcapng.classic(coalesce(chunks, self.batch_bytes))) as stream,
                tqdm(
                    total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not self.progress
                ) as bar,
            ):
                for batch in self._parse_stream(stream, bar, gzipped):
                    latest_before = np.maximum.accumulate(np.concatenate(([latest], batch["ts"])))
                    self.timestamps_backwards += int(np.count_nonzero(batch["ts"] < latest_before[:-1]))
                    latest = latest_before[-1]
                    yield batch
            self.torn_records += pcapng.torn_records
        if self.timestamps_backwards:
            warnings.warn(
                f"{self.path}: {self.timestamps_backwards} record{'s have' if self.timestamps_backwards > 1 else ' has'}"
                " a timestamp earlier than a record before; read in file order (`reordercap` sorts a capture by time)",
                TimestampsBackwardsWarning,
                stacklevel=2,
            )

    def _parse_stream(
        self, stream: Iterator[tuple[bytes, int]], bar: tqdm, gzipped: bool
    ) -> Iterator[np.ndarray]:
        tail = b""  # bytes after the last complete record
        base = 0  # stream offset of tail[0]
        parser = None
        for chunk, file_position in stream:
            bar.update(file_position - bar.n)
            if parser is None:
                tail += chunk
                if len(tail) < _FILE_HEADER_LEN:
                    continue
                self.header = _parse_file_header(tail, self.path, gzipped)
                parser = _ChunkParser(self.header, self.path, self.addresses)
                tail, chunk, base = b"", tail[_FILE_HEADER_LEN:], _FILE_HEADER_LEN
            data = b"".join((tail, chunk, _PADDING))
            end = len(data) - len(_PADDING)
            batch, consumed = parser.parse(data, end, base)
            tail, base = data[consumed:end], base + consumed
            if len(batch):
                yield batch
        if parser is None:
            _parse_file_header(tail, self.path, gzipped)  # raises: the file is too short
        elif tail:
            parser.check_torn_tail(tail, base)
            self.torn_records = 1


def iter_packet_batches(
    path: str | os.PathLike,
    *,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    progress: bool = False,
    addresses: AddressBook | None = None,
) -> Iterator[np.ndarray]:
    """Stream the packets of a pcap or pcapng file (gzip'ed or not) as PACKET_DTYPE arrays, in file order,
    IPv6 addresses numbered in `addresses`."""
    yield from PcapReader(path, batch_bytes=batch_bytes, progress=progress, addresses=addresses)


def _parse_file_header(head: bytes, path: str, gzipped: bool) -> PcapHeader:
    magic = head[:4]
    if len(magic) == 4 and magic not in _PCAP_MAGICS:
        raise PcapError(
            path,
            0,
            f"not a pcap file: magic bytes {magic.hex(' ')}, expected a1b2c3d4 or a1b23c4d "
            "in either byte order",
            decompressed=gzipped,
        )
    if len(head) < _FILE_HEADER_LEN:
        raise PcapError(
            path,
            len(head),
            f"file ends after {len(head)} bytes, inside the {_FILE_HEADER_LEN}-byte pcap file header",
            decompressed=gzipped,
        )
    byte_order, nanosecond = _PCAP_MAGICS[magic]
    major, minor, _zone, _sigfigs, snaplen, link_word = struct.unpack_from(f"{byte_order}HHiIII", head, 4)
    link_type = link_word & 0xFFFF  # the upper bits carry FCS information
    if link_type not in _LINK_FIELDS:
        raise PcapError(
            path,
            20,
            f"link type {link_type} is not supported (supported: Ethernet 1, raw IP "
            f"{', '.join(map(str, sorted(LINKTYPES_RAW_IP)))}, Linux cooked 113)",
            decompressed=gzipped,
        )
    return PcapHeader(byte_order, nanosecond, (major, minor), snaplen, link_type, gzipped)


class _ChunkParser:
    """Turns a chunk of pcap records into a PACKET_DTYPE array, for one file's header."""

    def __init__(self, header: PcapHeader, path: str, addresses: AddressBook):
        self._path = path
        self._addresses = addresses
        self._decompressed = header.gzipped
        self._link_type = header.link_type
        self._fragments = _Fragments()
        self._snaplen = header.snaplen or _MAX_SNAPLEN
        self._frac_unit = 1e-9 if header.nanosecond else 1e-6
        self._caplen_at = struct.Struct(f"{header.byte_order}8xI").unpack_from
        self._header_at = struct.Struct(f"{header.byte_order}8xII").unpack_from
        order = header.byte_order
        link_fields, itemsize = _LINK_FIELDS[header.link_type]
        fields = [
            ("ts_sec", f"{order}u4", 0),
            ("ts_frac", f"{order}u4", 4),
            ("caplen", f"{order}u4", 8),
            ("orig_len", f"{order}u4", 12),
            *link_fields,
        ]
        self._record_dtype = np.dtype(
            {
                "names": [name for name, _, _ in fields],
                "formats": [fmt for _, fmt, _ in fields],
                "offsets": [offset for _, _, offset in fields],
                "itemsize": itemsize,
            }
        )

    def parse(self, data: bytes, end: int, base: int) -> tuple[np.ndarray, int]:
        """Parse the complete records of data[:end] (data[0] being stream byte `base`); return them
        and how many bytes they span. Bytes from end on must be padding."""
        offsets, consumed = self._walk(data, end)
        records = _gather(data, offsets, self._record_dtype)
        self._check_records(records["caplen"], records["orig_len"], offsets, base)
        if end - consumed >= _RECORD_HEADER_LEN:
            # The next chunk completes this record; vetting it now keeps a corrupt caplen from
            # making the carried-over tail grow without bound.
            self._check_header_at(data, consumed, base)

        packets = np.zeros(len(offsets), PACKET_DTYPE)
        packets["ts"] = records["ts_sec"] + records["ts_frac"] * self._frac_unit
        packets["wire_len"] = records["orig_len"]
        ethertype, link_len = self._network_layer(records)
        parse_ipv6 = functools.partial(_parse_ipv6, addresses=self._addresses)
        for kind, parse in ((_ETHERTYPE_IPV4, self._parse_ipv4), (_ETHERTYPE_IPV6, parse_ipv6)):
            rows = np.flatnonzero(ethertype == kind)
            if rows.size:
                row_link_len = link_len if np.isscalar(link_len) else link_len[rows]
                parse(
                    data,
                    packets,
                    rows,
                    offsets[rows] + _RECORD_HEADER_LEN + row_link_len,
                    records["caplen"][rows] - row_link_len,
                )
        return packets, consumed

    def check_torn_tail(self, tail: bytes, base: int) -> None:
        """Vet and report bytes left after the last complete record: a cut capture is fine, a
        corrupt header is not."""
        needed = _RECORD_HEADER_LEN
        if len(tail) >= _RECORD_HEADER_LEN:
            self._check_header_at(tail, 0, base)
            needed += self._caplen_at(tail, 0)[0]
        warnings.warn(
            f"{location(self._path, base, self._decompressed)}: the last record is cut short "
            f"({len(tail)} of {needed} bytes); skipped it",
            TornRecordWarning,
            stacklevel=4,
        )

    def _walk(self, data: bytes, end: int) -> tuple[np.ndarray, int]:
        """Offsets of the complete records in data[:end], and where the remainder begins. The only
        per-record Python loop of the reader (the chain of caplen fields is inherently sequential),
        so it does nothing but follow that chain; the records are vetted afterwards, in bulk."""
        offsets = []
        append = offsets.append
        caplen_at = self._caplen_at
        offset, last_header = 0, end - _RECORD_HEADER_LEN
        while offset <= last_header:
            append(offset)
            offset += caplen_at(data, offset)[0] + _RECORD_HEADER_LEN
        if offset > end:  # the last record runs past end
            offset = offsets.pop()
        return np.array(offsets, dtype=np.intp), offset

    def _check_header_at(self, data: bytes, offset: int, base: int) -> None:
        caplen, orig_len = self._header_at(data, offset)
        self._check_records(np.array([caplen]), np.array([orig_len]), np.array([offset]), base)

    def _check_records(
        self, caplen: np.ndarray, orig_len: np.ndarray, offsets: np.ndarray, base: int
    ) -> None:
        """Reject the first record whose captured length is impossible: past that point the record
        boundaries themselves are garbage."""
        bad = (caplen > self._snaplen) | (caplen > orig_len)
        if not bad.any():
            return
        first = int(np.argmax(bad))
        caplen_value, orig_value = int(caplen[first]), int(orig_len[first])
        detail = (
            f"record caplen {caplen_value} exceeds snap length {self._snaplen}"
            if caplen_value > self._snaplen
            else f"record caplen {caplen_value} exceeds its original length {orig_value}"
        )
        raise PcapError(
            self._path,
            base + int(offsets[first]),
            f"{detail} (corrupt record)",
            decompressed=self._decompressed,
        )

    def _network_layer(self, records: np.ndarray) -> tuple[np.ndarray, np.ndarray | int]:
        """Ethertype of each record's network layer (0 where not captured) and the link header length."""
        caplen = records["caplen"]
        if self._link_type == LINKTYPE_ETHERNET:  # up to two VLAN tags: 802.1Q, or QinQ's two
            tagged = _is_vlan_tag(records["eth_type"])
            twice = tagged & _is_vlan_tag(records["vlan_type"])
            ethertype = np.select([twice, tagged], [records["vlan2_type"], records["vlan_type"]], records["eth_type"])
            link_len = 14 + 4 * tagged.astype(np.intp) + 4 * twice.astype(np.intp)
            return np.where(caplen >= link_len, ethertype, 0), link_len
        if self._link_type == LINKTYPE_LINUX_SLL:
            return np.where(caplen >= 16, records["sll_protocol"], 0), 16
        version = np.where(caplen >= 1, records["ip_version"] >> 4, 0)
        return np.select([version == 4, version == 6], [_ETHERTYPE_IPV4, _ETHERTYPE_IPV6], 0), 0

    def _parse_ipv4(
        self,
        data: bytes,
        packets: np.ndarray,
        rows: np.ndarray,
        l3_offsets: np.ndarray,
        l3_caplen: np.ndarray,
    ) -> None:
        """Fill the IPv4 fields of packets[rows], whose IPv4 headers start at l3_offsets in data and
        have l3_caplen bytes captured."""
        ip = _gather(data, l3_offsets, _IPV4_HEADER)
        header_len = (ip["version_ihl"] & 0x0F).astype(np.intp) * 4
        valid = (ip["version_ihl"] >> 4 == 4) & (header_len >= 20) & (l3_caplen >= 20)
        packets["l3"][rows] = np.where(valid, L3_IPV4, L3_IPV4_MALFORMED)
        if not valid.all():
            rows, ip, header_len = rows[valid], ip[valid], header_len[valid]
            l3_offsets, l3_caplen = l3_offsets[valid], l3_caplen[valid]
        packets["is_ipv4"][rows] = True
        proto = ip["proto"]
        packets["proto"][rows] = proto
        packets["src_ip"][rows] = ip["src"]
        packets["dst_ip"][rows] = ip["dst"]

        first_fragment = ip["flags_fragment"] & 0x1FFF == 0  # later fragments carry no transport header
        has_ports = (
            ((proto == _IPPROTO_TCP) | (proto == _IPPROTO_UDP))
            & first_fragment
            & (l3_caplen >= header_len + 4)
        )
        src_port, dst_port = ip["src_port"], ip["dst_port"]
        with_options = np.flatnonzero(has_ports & (header_len > 20))
        if with_options.size:
            ports = _gather(data, l3_offsets[with_options] + header_len[with_options], _PORTS)
            src_port, dst_port = src_port.copy(), dst_port.copy()
            src_port[with_options], dst_port[with_options] = ports["src_port"], ports["dst_port"]
        port_rows = rows[has_ports]
        packets["has_ports"][port_rows] = True
        packets["src_port"][port_rows] = src_port[has_ports]
        packets["dst_port"][port_rows] = dst_port[has_ports]
        fragment = (ip["flags_fragment"] & 0x3FFF != 0) & ((proto == _IPPROTO_TCP) | (proto == _IPPROTO_UDP))
        if fragment.any():
            self._fragments.attribute(packets, rows[fragment], ip[fragment])


def _is_vlan_tag(ethertype: np.ndarray) -> np.ndarray:
    return (ethertype == _VLAN_TPIDS[0]) | (ethertype == _VLAN_TPIDS[1]) | (ethertype == _VLAN_TPIDS[2])


class _Fragments:
    """Ports of fragmented IPv4 datagrams, so that a later fragment (no transport header) joins the flow
    of its first: the key is the first fragment's (src, dst, proto, IP id), as in reassembly (RFC 791).
    A later fragment whose first fragment came later or not at all keeps ports 0. The last fragment (MF
    clear) ends an entry; at most MAX_DATAGRAMS stay open, the oldest dropped first."""

    MAX_DATAGRAMS = 1 << 16

    def __init__(self):
        self._ports: dict[tuple[int, int, int, int], tuple[int, int]] = {}

    def attribute(self, packets: np.ndarray, rows: np.ndarray, ip: np.ndarray) -> None:
        """Record the ports of first fragments among packets[rows] and give them to later ones, in file order."""
        offset, more = ip["flags_fragment"] & 0x1FFF, ip["flags_fragment"] & 0x2000 != 0
        keys = zip(ip["src"].tolist(), ip["dst"].tolist(), ip["proto"].tolist(), ip["ident"].tolist())
        for row, key, first, last in zip(rows.tolist(), keys, (offset == 0).tolist(), (~more).tolist()):
            if first:
                if packets["has_ports"][row]:
                    self._ports[key] = (int(packets["src_port"][row]), int(packets["dst_port"][row]))
            elif (ports := self._ports.get(key)) is not None:
                packets["src_port"][row], packets["dst_port"][row] = ports
                if last:
                    del self._ports[key]
        while len(self._ports) > self.MAX_DATAGRAMS:
            del self._ports[next(iter(self._ports))]


def _parse_ipv6(data: bytes, packets: np.ndarray, rows: np.ndarray, l3_offsets: np.ndarray,
                l3_caplen: np.ndarray, addresses: AddressBook) -> None:
    """Fill the IPv6 fields of packets[rows], as _ChunkParser._parse_ipv4 does for IPv4 (the addresses as
    their numbers in `addresses`), following up to _MAX_IPV6_EXTENSIONS extension headers to the transport
    protocol. A non-first fragment has no ports."""
    ip = _gather(data, l3_offsets, _IPV6_HEADER)
    valid = (ip["version"] >> 4 == 6) & (l3_caplen >= 40)
    packets["l3"][rows] = np.where(valid, L3_IPV6, L3_IPV6_MALFORMED)
    rows, ip, l3_offsets, l3_caplen = rows[valid], ip[valid], l3_offsets[valid], l3_caplen[valid]
    if not rows.size:
        return
    packets["is_ipv6"][rows] = True
    packets["src_ip"][rows] = addresses.numbers(ip["src"])
    packets["dst_ip"][rows] = addresses.numbers(ip["dst"])
    proto = ip["next_header"].astype(np.intp)
    header_len = np.full(len(rows), 40, np.intp)
    later_fragment = np.zeros(len(rows), bool)
    for _ in range(_MAX_IPV6_EXTENSIONS):
        at = np.flatnonzero(np.isin(proto, _IPV6_EXTENSIONS) & (l3_caplen >= header_len + 8))
        if not at.size:
            break
        extension = _gather(data, l3_offsets[at] + header_len[at], _IPV6_EXTENSION)
        kind, length = proto[at], extension["length"].astype(np.intp)
        later_fragment[at] |= (kind == _IPV6_FRAGMENT) & (extension["fragment"] >> 3 != 0)
        header_len[at] += np.select([kind == _IPV6_FRAGMENT, kind == _IPV6_AH], [8, (length + 2) * 4],
                                    (length + 1) * 8)
        proto[at] = extension["next_header"]
    packets["proto"][rows] = proto
    has_ports = ((proto == _IPPROTO_TCP) | (proto == _IPPROTO_UDP)) & ~later_fragment & (l3_caplen >= header_len + 4)
    if has_ports.any():
        ports = _gather(data, l3_offsets[has_ports] + header_len[has_ports], _PORTS)
        port_rows = rows[has_ports]
        packets["has_ports"][port_rows] = True
        packets["src_port"][port_rows], packets["dst_port"][port_rows] = ports["src_port"], ports["dst_port"]


def _gather(data: bytes, offsets: np.ndarray, layout: np.dtype) -> np.ndarray:
    """The fixed-layout structures starting at each offset of data, in one numpy call. Reads through a
    view with one overlapping item per byte; copies them as plain bytes (several times faster than a
    structured copy) and only then reinterprets them."""
    raw = np.dtype(f"V{layout.itemsize}")
    items = np.ndarray(shape=(len(data) - layout.itemsize + 1,), dtype=raw, buffer=data, strides=(1,))
    return items[offsets].view(layout)
