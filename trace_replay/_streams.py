"""Bytes in, for the trace reader: plain and gzip files as pieces, regrouped into chunks, read ahead in a
worker thread (file reads and zlib release the GIL, so they overlap parsing on a second core)."""

from __future__ import annotations

import queue
import threading
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from trace_replay._errors import PcapError

_GZIP_READ_BYTES = 1 << 20
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # expect a gzip wrapper, whose CRC and length zlib then verifies


def plain_chunks(file: BinaryIO, path: str, size: int) -> Iterator[tuple[bytes, int]]:
    """(bytes, file position after them) pieces of an uncompressed file."""
    while chunk := file.read(size):
        yield chunk, file.tell()


def gzip_chunks(file: BinaryIO, path: str, size: int) -> Iterator[tuple[bytes, int]]:
    """(decompressed bytes, compressed file position) pieces of a gzip file, members concatenated as
    gzip(1) does, and zero bytes after the last member taken as padding (as tape and block devices leave it,
    and as `gzip -t` accepts). zlib checks each member's CRC and length trailer. A piece holds at most `size`
    bytes, however well the data compresses."""
    inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
    padded = False
    while block := file.read(_GZIP_READ_BYTES):
        compressed = block
        while compressed:
            if padded or (inflater.eof and compressed[0] == 0):  # zeros after a member: padding, as gzip -t reads it
                padded = True
                _check_zeros(compressed, file.tell() - len(compressed), path)
                break
            if inflater.eof:  # the next gzip member begins
                inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
            try:
                piece = inflater.decompress(compressed, size)
            except zlib.error as exc:
                start = file.tell() - len(block)
                raise PcapError(
                    path, start, f"corrupt gzip stream within the {len(block)} bytes from here ({exc})"
                ) from None
            compressed = inflater.unconsumed_tail or inflater.unused_data
            yield piece, file.tell()
    if not inflater.eof:
        raise PcapError(path, file.tell(), "gzip stream is truncated: the file ends before the gzip trailer")


def _check_zeros(data: bytes, offset: int, path: str) -> None:
    """Refuse padding that is not all zeros (`gzip -t` warns of "trailing garbage"); `offset` is data[0]'s."""
    if rest := data.lstrip(b"\0"):
        raise PcapError(path, offset + len(data) - len(rest),
                        "non-zero bytes after the gzip data's zero padding (trailing garbage)")


def coalesce(chunks: Iterator[tuple[bytes, int]], size: int) -> Iterator[tuple[bytes, int]]:
    """Regroup pieces into chunks of at least `size` bytes (the last may be shorter)."""
    pending: list[bytes] = []
    pending_len = 0
    position = 0
    for piece, position in chunks:
        pending.append(piece)
        pending_len += len(piece)
        if pending_len >= size:
            yield b"".join(pending), position
            pending, pending_len = [], 0
    if pending:
        yield b"".join(pending), position


_END = object()


class ReadAhead:
    """Runs a chunk iterator in a worker thread, a bounded queue ahead of the consumer.

    File reads and zlib release the GIL, so decompression proceeds on a second core while the
    consumer parses. Errors raised by the iterator are re-raised in the consumer.
    """

    def __init__(self, chunks: Iterator, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._produce, args=(chunks,), name="pcap-read-ahead", daemon=True
        )

    def __enter__(self) -> Iterator:
        self._thread.start()
        return self._consume()

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass

    def _produce(self, chunks: Iterator) -> None:
        try:
            for chunk in chunks:
                self._queue.put(chunk)
                if self._stop.is_set():
                    return
            self._queue.put(_END)
        except BaseException as exc:  # noqa: BLE001 - the consumer must see any failure, or it waits forever
            self._queue.put(exc)

    def _consume(self) -> Iterator:
        while (item := self._queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
