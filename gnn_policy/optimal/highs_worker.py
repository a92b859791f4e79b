"""HiGHS in a child process that can be stopped.

HiGHS does not always honour its time limit (ERGO-Code/HiGHS#885, #2226): a dm-bench run here waited 31 minutes
on a solve given 5 s. A thread cannot be stopped, a process can, so every solve runs in one long-lived worker
process: `SolverProcess.solve` waits for the answer until the time limit plus `HARD_GRACE_S` and then kills the
worker; the next solve starts a fresh one.

A model is a log of highspy calls (`Highs.<method>(*args)`, numpy arrays and numbers only). The worker keeps the
recent models it built, keyed by the caller, so a model solved again (new cuts, a new objective) is only extended
with the calls added since, and HiGHS keeps its basis between those solves.
"""
from __future__ import annotations

import itertools
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections import OrderedDict

HARD_GRACE_S = 2.0
"""Seconds a solve may overrun its time limit before its worker is killed; HiGHS normally stops within
milliseconds of the limit, so only a solve that ignores it gets here."""
STARTUP_LIMIT_S = 60.0
"""Seconds a new worker may take to import numpy and highspy and report ready."""
KEPT_MODELS = 4
"""Models the worker keeps for later solves (each caller's `Milp` is one)."""

_keys = itertools.count()
_HEADER = struct.Struct("!Q")


def _send(channel: socket.socket, message) -> None:
    """One pickled message, length first; within the channel's timeout (a stopped worker stops reading)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    channel.sendall(_HEADER.pack(len(payload)) + payload)


def _receive(channel: socket.socket):
    header = _exactly(channel, _HEADER.size)
    return pickle.loads(_exactly(channel, _HEADER.unpack(header)[0]))


def _exactly(channel: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = channel.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other end closed the channel")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def new_key() -> int:
    """A fresh model key: a model solved under a new key is rebuilt from its whole log."""
    return next(_keys)


class WorkerError(RuntimeError):
    """The worker failed in a way that is not a time-out (an exception in HiGHS or the worker exiting)."""


class SolverProcess:
    """The parent's handle on the worker: one solve at a time, a hard deadline on each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._channel: socket.socket | None = None
        self._owner = -1
        # Calls of each model's log the current worker has applied.
        self._synced: dict[int, int] = {}

    def start(self) -> None:
        """Start the worker if none runs for this process (a forked child starts its own)."""
        with self._lock:
            self._ensure_started()

    def solve(self, key: int, log: list[tuple[str, tuple]], options: dict, start, seconds: float,
              save: bool) -> dict | None:
        """Build or extend model `key` from `log`, solve it within `seconds`, return the worker's report;
        None when the worker overran the limit by `HARD_GRACE_S` and was killed."""
        with self._lock:
            self._ensure_started()
            synced = self._synced.get(key, 0)
            reply = self._request((key, synced, log[synced:], options, start, save), seconds + HARD_GRACE_S)
            if reply is not None and reply[0] == "resync":  # the worker dropped this model: send all of it
                reply = self._request((key, 0, log, options, start, save), seconds + HARD_GRACE_S)
            if reply is None:
                return None
            kind, payload = reply
            if kind == "error":
                raise WorkerError(f"HiGHS worker failed on a solve:\n{payload}")
            self._synced[key] = len(log)
            return payload

    def _request(self, message, limit_s: float):
        """Send `message` and wait for the answer, both within `limit_s`; None (worker killed) past it."""
        deadline = time.monotonic() + limit_s
        try:
            self._channel.settimeout(limit_s)
            _send(self._channel, message)
            self._channel.settimeout(max(deadline - time.monotonic(), 1e-3))
            return _receive(self._channel)
        except TimeoutError:
            self._stop()
            return None
        except (EOFError, OSError) as error:
            code = self._process.poll()
            self._stop()
            raise WorkerError(f"HiGHS worker exited (code {code}) during a solve") from error

    def _ensure_started(self) -> None:
        if self._process is not None and self._owner == os.getpid() and self._process.poll() is None:
            return
        if self._owner == os.getpid():
            self._stop()
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(theirs.fileno())],
                                         pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL)  # highspy's banner; errors go to stderr
        theirs.close()
        self._channel = ours
        self._owner = os.getpid()
        self._synced = {}
        ours.settimeout(STARTUP_LIMIT_S)
        try:
            ready = _receive(ours)
        except (TimeoutError, EOFError, OSError):
            ready = None
        if ready != "ready":
            self._stop()
            raise WorkerError(f"HiGHS worker did not start within {STARTUP_LIMIT_S:g} s")

    def _stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        if self._channel is not None:
            self._channel.close()
        self._process, self._channel, self._synced = None, None, {}

    @property
    def pid(self) -> int | None:
        """The worker's process id (None before the first start)."""
        return self._process.pid if self._process is not None else None


solver_process = SolverProcess()
"""The worker of this process, shared by every model."""


# ------------------------------------------------------------------------------------------------
# The worker side.

def _run(h, options: dict, start, save: bool) -> dict:
    import highspy
    import numpy as np

    for option, value in options.items():
        h.setOptionValue(option, value)
    if start is not None:
        solution = highspy.HighsSolution()
        solution.col_value = np.asarray(start, dtype=float).tolist()
        solution.value_valid = True
        h.setSolution(solution)
    h.run()
    info = h.getInfo()
    feasible = info.primal_solution_status == 2
    status = h.getModelStatus()
    named = {highspy.HighsModelStatus.kOptimal: "optimal", highspy.HighsModelStatus.kTimeLimit: "time_limit",
             highspy.HighsModelStatus.kInfeasible: "infeasible"}
    return {
        "status": named.get(status, str(status).split(".")[-1].lower()),
        "x": np.asarray(h.getSolution().col_value, dtype=float) if feasible else None,
        "objective": info.objective_function_value,
        "mip_dual_bound": info.mip_dual_bound,
        "saved": [np.asarray(s.col_value, dtype=float) for s in h.getSavedMipSolutions()] if save else [],
    }


def serve(fd: int) -> None:
    """Answer solve requests on the socket `fd` until the parent closes it."""
    import highspy

    channel = socket.socket(fileno=fd)
    models: OrderedDict[int, tuple[highspy.Highs, int]] = OrderedDict()
    _send(channel, "ready")
    while True:
        try:
            key, first, calls, options, start, save = _receive(channel)
        except (EOFError, OSError):
            return
        h, applied = models.pop(key, (None, 0))
        if h is None and first == 0:
            h = highspy.Highs()
        if h is None or applied != first:
            _send(channel, ("resync", None))
            continue
        try:
            for method, args in calls:
                getattr(h, method)(*args)
            report = _run(h, options, start, save)
        except Exception:  # noqa: BLE001 - the parent raises it with the traceback
            _send(channel, ("error", traceback.format_exc()))
            continue
        models[key] = (h, first + len(calls))
        while len(models) > KEPT_MODELS:
            models.popitem(last=False)
        _send(channel, ("done", report))


if __name__ == "__main__":
    serve(int(sys.argv[1]))
