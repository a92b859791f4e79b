"""pcapng, the default format of tcpdump and Wireshark, read as the classic pcap stream it holds.

`PcapngConverter.classic` passes a classic stream through untouched and turns a pcapng one into
classic records (nanosecond timestamps) for trace_replay.pcap's vectorised parser: blocks are walked
one by one in Python, the pcapng format having no fixed record layout. Enhanced and simple packet
blocks become records; section headers and interface descriptions set the byte order, link type,
snap length and timestamp unit (if_tsresol, if_tsoffset); every other block (statistics, name
resolution, custom) is skipped. dpkt's pcapng reader is not used: it drops each packet's original
length, which header-only traces need, and names no offset when a file is corrupt.

Errors name the file and the byte offset of the block in the pcapng data. All interfaces of a file
must share one supported link type.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from trace_replay._errors import PcapError, TornRecordWarning, location

PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_BYTE_ORDERS = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}
_SECTION, _INTERFACE, _SIMPLE_PACKET, _ENHANCED_PACKET = 0x0A0D0D0A, 1, 3, 6
_OPT_TSRESOL, _OPT_TSOFFSET = 9, 14
_MAX_BLOCK = 1 << 24  # larger is corruption: a packet is at most 256 KiB
_MAX_CAPLEN = 262_144
_CLASSIC_RECORD = struct.Struct("<IIII")


@dataclass
class _Interface:
    link_type: int
    snaplen: int
    tick_ns: tuple[int, int]  # a timestamp unit as the fraction numerator/denominator of a nanosecond
    offset_s: int


class PcapngConverter:
    """One file's pcapng-to-classic conversion; `torn_records` is 1 once a cut-short last block was skipped."""

    def __init__(self, path: str, decompressed: bool, link_types: frozenset[int]):
        self._path, self._decompressed, self._link_types = path, decompressed, link_types
        self._order = "<"
        self._interfaces: list[_Interface] = []
        self._link_type: int | None = None
        self.torn_records = 0

    def classic(self, chunks: Iterator[tuple[bytes, int]]) -> Iterator[tuple[bytes, int]]:
        """The (bytes, file position) chunks of a classic pcap stream: `chunks` as they are, unless pcapng."""
        head, position = b"", 0
        for chunk, position in chunks:
            head += chunk
            if len(head) >= len(PCAPNG_MAGIC):
                break
        if head[: len(PCAPNG_MAGIC)] != PCAPNG_MAGIC:
            yield head, position
            yield from chunks
            return
        yield from self._converted(head, position, chunks)

    def _converted(self, head: bytes, position: int, chunks) -> Iterator[tuple[bytes, int]]:
        pending, base = bytearray(head), 0  # unparsed bytes, and the stream offset of pending[0]
        while True:
            records, used = self._blocks(pending, base)
            del pending[:used]
            base += used
            if records:
                yield b"".join(records), position
            try:
                chunk, position = next(chunks)
            except StopIteration:
                break
            pending += chunk
        if self._link_type is None:
            raise self._error(base, "the pcapng file ends before any interface description block")
        if pending:
            self.torn_records = 1
            warnings.warn(f"{location(self._path, base, self._decompressed)}: the last pcapng block is cut short "
                          f"({len(pending)} bytes); skipped it", TornRecordWarning, stacklevel=2)

    def _blocks(self, data: bytearray, base: int) -> tuple[list[bytes], int]:
        """The classic records of the complete blocks at the start of data, and how many bytes they span."""
        records: list[bytes] = []
        offset = 0
        while len(data) - offset >= 12:
            kind = struct.unpack_from(self._order + "I", data, offset)[0]
            if kind == _SECTION:
                self._order = _BYTE_ORDERS.get(bytes(data[offset + 8 : offset + 12]), "")
                if not self._order:
                    raise self._error(base + offset, f"unknown pcapng byte-order magic {data[offset + 8:offset + 12].hex()}")
            length = struct.unpack_from(self._order + "I", data, offset + 4)[0]
            if length < 12 or length % 4 or length > _MAX_BLOCK:
                raise self._error(base + offset, f"pcapng block length {length} is impossible (corrupt block)")
            if len(data) - offset < length:
                break
            if struct.unpack_from(self._order + "I", data, offset + length - 4)[0] != length:
                raise self._error(base + offset, f"pcapng block of length {length} ends with another length")
            body = bytes(data[offset + 8 : offset + length - 4])
            record = self._block(kind, body, base + offset)
            if record:
                records.append(record)
            offset += length
        return records, offset

    def _block(self, kind: int, body: bytes, at: int) -> bytes:
        """The classic bytes one block stands for: a record, the file header (first interface), or none."""
        if kind == _SECTION:
            self._interfaces = []
        elif kind == _INTERFACE:
            return self._interface(body, at)
        elif kind == _ENHANCED_PACKET:
            if len(body) < 20:
                raise self._error(at, "pcapng enhanced packet block too short for its fields")
            interface, high, low, caplen, orig_len = struct.unpack_from(self._order + "5I", body)
            return self._record(self._known(interface, at), (high << 32) | low, body[20:], caplen, orig_len, at)
        elif kind == _SIMPLE_PACKET:
            interface = self._known(0, at)
            orig_len = struct.unpack_from(self._order + "I", body)[0]
            caplen = min(orig_len, interface.snaplen or _MAX_CAPLEN, len(body) - 4)
            return self._record(interface, None, body[4:], caplen, orig_len, at)
        return b""

    def _interface(self, body: bytes, at: int) -> bytes:
        link_type, _, snaplen = struct.unpack_from(self._order + "HHI", body)
        tick, offset_s = (1000, 1), 0  # microseconds unless if_tsresol says otherwise
        for code, value in self._options(body[8:]):
            if code == _OPT_TSRESOL and value:
                exponent = value[0] & 0x7F
                tick = (10**9, 2**exponent) if value[0] & 0x80 else (10**9, 10**exponent)
            elif code == _OPT_TSOFFSET and len(value) == 8:
                offset_s = struct.unpack(self._order + "q", value)[0]
        self._interfaces.append(_Interface(link_type, snaplen, tick, offset_s))
        if link_type not in self._link_types:
            supported = ", ".join(map(str, sorted(self._link_types)))
            raise self._error(at, f"link type {link_type} is not supported (supported: {supported})")
        if self._link_type is None:
            self._link_type = link_type  # the classic header: nanosecond, snap length 0 (each record checked here)
            return struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 0, link_type)
        if link_type != self._link_type:
            raise self._error(at, f"interfaces of link types {self._link_type} and {link_type} in one file; "
                                  "split it with `tshark -i` or editcap")
        return b""

    def _options(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        offset = 0
        while offset + 4 <= len(data):
            code, length = struct.unpack_from(self._order + "HH", data, offset)
            if code == 0:
                return
            yield code, data[offset + 4 : offset + 4 + length]
            offset += 4 + length + (-length % 4)

    def _known(self, interface: int, at: int) -> _Interface:
        if interface >= len(self._interfaces):
            raise self._error(at, f"packet of interface {interface}, which no interface description block declared")
        return self._interfaces[interface]

    def _record(self, interface: _Interface, ticks: int | None, data: bytes, caplen: int, orig_len: int,
                at: int) -> bytes:
        if caplen > len(data) or caplen > (interface.snaplen or _MAX_CAPLEN) or caplen > orig_len:
            raise self._error(at, f"packet caplen {caplen} exceeds its block, the snap length or its original "
                                  f"length {orig_len} (corrupt block)")
        seconds, nanoseconds = 0, 0
        if ticks is not None:
            numerator, denominator = interface.tick_ns
            seconds, nanoseconds = divmod(ticks * numerator // denominator, 10**9)
            seconds += interface.offset_s
        return _CLASSIC_RECORD.pack(seconds & 0xFFFFFFFF, nanoseconds, caplen, orig_len) + data[:caplen]

    def _error(self, offset: int, detail: str) -> PcapError:
        return PcapError(self._path, offset, detail, decompressed=self._decompressed)
