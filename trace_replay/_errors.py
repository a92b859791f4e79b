"""The reader's error and warnings, shared by the pcap and pcapng parsing and the byte streams under them."""

from __future__ import annotations


class PcapError(ValueError):
    """A trace that cannot be read. The message names the file and the byte offset of the problem;
    for gzip files, offsets into the pcap data count decompressed bytes and say so."""

    def __init__(self, path: str, offset: int, detail: str, *, decompressed: bool = False):
        self.path = path
        self.offset = offset
        self.detail = detail
        super().__init__(f"{location(path, offset, decompressed)}: {detail}")


class TornRecordWarning(UserWarning):
    """The file ends inside its last record, as when a capture is cut off; that record is skipped."""


def location(path: str, offset: int, decompressed: bool) -> str:
    return f"{path}: byte {offset} of the decompressed data" if decompressed else f"{path}: byte {offset}"


class TimestampsBackwardsWarning(UserWarning):
    """Records whose timestamp is earlier than one before them; read in file order all the same."""
