"""The control channel between the controller and an NF instance: JSON Lines over a Unix stream socket.

A Unix socket is a file, and Mininet hosts share the file system while each has its own network
namespace, so the controller (in the root namespace) reaches every NF without any IP routing into
the hosts. Each request is one JSON object on a line, {"op": NAME, ...}; each answer is one line,
{"ok": true, ...} or {"ok": false, "error": MESSAGE}. A bad request gets an error answer and the
connection stays usable.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Self

from twin.flow import FlowIdError, FlowKey

_MAX_UNIX_PATH = 107  # sun_path holds 108 bytes including the terminating NUL
log = logging.getLogger(__name__)


class NFError(RuntimeError):
    """The NF answered a request with {"ok": false}; the message is its error."""


class RequestError(ValueError):
    """A request the server cannot carry out; its message goes back to the client."""


def parse_key(value) -> FlowKey:
    """The FlowKey of a JSON key [ip, ip, port, port, proto], given in either direction."""
    if not isinstance(value, list) or len(value) != 5:
        raise RequestError(f"a flow key is a list [ip_a, ip_b, port_a, port_b, proto], not {value!r}")
    try:
        return FlowKey.of(*value)
    except FlowIdError as exc:
        raise RequestError(f"flow key {value!r}: {exc}") from None


def check_socket_path(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if len(os.fsencode(path)) > _MAX_UNIX_PATH:
        raise ValueError(
            f"Unix socket path {path!r} is longer than {_MAX_UNIX_PATH} bytes; use a shorter directory"
        )
    return path


class ChannelServer:
    """Serves `handle(request) -> answer fields` on a Unix socket, one thread per connection.

    `handle` raises RequestError for bad requests; any other exception is logged and answered as an
    internal error, so one failing request never takes the server down.
    """

    def __init__(self, path: str | os.PathLike, handle: Callable[[dict], dict]):
        self.path = check_socket_path(path)
        self._handle = handle
        Path(self.path).unlink(missing_ok=True)  # a stale file from a killed run would block bind()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen()
        self._closed = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name=f"channel {self.path}", daemon=True)

    def start(self) -> ChannelServer:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, end the open connections and remove the socket file."""
        self._closed.set()
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)
        with self._connections_lock:
            for connection in self._connections:
                connection.shutdown(socket.SHUT_RDWR)
        Path(self.path).unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)
        try:
            with connection.makefile("rwb") as stream:
                for line in stream:
                    stream.write(json.dumps(self._answer(line)).encode() + b"\n")
                    stream.flush()
        except OSError:  # the client went away mid-answer, or close() ended the connection
            pass
        finally:
            # Leave the set before closing, so close() never shuts down an already closed socket.
            with self._connections_lock:
                self._connections.discard(connection)
            connection.close()

    def _answer(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
        except ValueError as exc:
            return {"ok": False, "error": f"request is not JSON: {exc}"}
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "error": 'a request is a JSON object with a string "op"'}
        try:
            return {"ok": True, **self._handle(request)}
        except RequestError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # the server must outlive a failing request
            log.exception("request %r failed", request)
            return {"ok": False, "error": f"internal error in {request['op']}: {exc!r}"}


class NFClient:
    """Client of one NF's control socket; one method per op. Thread-safe.

    Connects on first use and again after a broken connection (so an NF that was restarted is
    reachable again). A refused or timed-out call raises OSError (ConnectionError, TimeoutError);
    an {"ok": false} answer raises NFError. Flow keys may be given in either direction; answers
    carry canonical keys as lists.
    """

    def __init__(self, path: str | os.PathLike, timeout: float = 5.0):
        self.path = check_socket_path(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._stream = None

    def report(self) -> dict:
        """Load, queue, counters, activity and per-flow state (see docs/testbed.md)."""
        return self._call({"op": "report"})

    def hold(self, key) -> dict:
        """Buffer the flow's packets from now on instead of processing them, until release."""
        return self._call({"op": "hold", "key": list(key)})

    def export(self, key, quiet_ms: float = 50.0, timeout_ms: float = 5000.0) -> dict | None:
        """Wait until none of the flow's packets is queued and none arrived for quiet_ms, then remove
        and return its state (None if the instance has none). Fails after timeout_ms."""
        request = {"op": "export", "key": list(key), "quiet_ms": quiet_ms, "timeout_ms": timeout_ms}
        return self._call(request, timeout=self.timeout + timeout_ms / 1000)["state"]

    def import_(self, key, state: dict | None) -> dict:
        """Merge exported flow state into this instance's state for the flow."""
        return self._call({"op": "import", "key": list(key), "state": state})

    def acknowledge(self, key, transfer: str) -> dict:
        """The state this NF exported as `transfer` was imported elsewhere: it may forget the copy it keeps."""
        return self._call({"op": "acknowledge", "key": list(key), "transfer": transfer})

    def release(self, key) -> dict:
        """Process the flow's held packets in arrival order, then its packets as usual."""
        return self._call({"op": "release", "key": list(key)})

    def activate(self) -> dict:
        return self._call({"op": "activate"})

    def deactivate(self) -> dict:
        return self._call({"op": "deactivate"})

    def shutdown(self) -> dict:
        """Ask the NF process to exit."""
        return self._call({"op": "shutdown"})

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _call(self, request: dict, timeout: float | None = None) -> dict:
        with self._lock:
            try:
                if self._socket is None:
                    self._connect()
                self._socket.settimeout(timeout or self.timeout)
                self._stream.write(json.dumps(request).encode() + b"\n")
                self._stream.flush()
                line = self._stream.readline()
            except OSError:
                self._disconnect()
                raise
            if not line:
                self._disconnect()
                raise ConnectionError(f"NF at {self.path} closed the connection during {request['op']}")
        answer = json.loads(line)
        if not answer.pop("ok"):
            raise NFError(f"{request['op']} failed at {self.path}: {answer['error']}")
        return answer

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise ConnectionError(f"cannot reach the NF control socket {self.path}: {exc}") from exc
        self._socket, self._stream = sock, sock.makefile("rwb")

    def _disconnect(self) -> None:
        sock, stream = self._socket, self._stream
        self._socket = self._stream = None
        if sock is not None:
            sock.close()
            try:
                stream.close()
            except OSError:  # flushing a request the dead peer never read
                pass
