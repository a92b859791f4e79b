"""Carrying out a decided action: instances started, flows moved loss-free and in order (OpenNF's
protocol, several moves together phase by phase), failed moves rolled back, emptied instances stopped."""
from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from controller_app.config import ControllerConfig
from controller_app.decisions import DecisionRecord
from controller_app.instances import NFRuntime
from controller_app.recovery import acknowledge, kill_point, maybe_kill
from controller_app.state_collection import MigrationLatency
from controller_app.steering import FlowRegistry, SteeredFlow, Switch
from twin.migration import Migration

LOG = logging.getLogger(__name__)


class Step(str, enum.Enum):
    """The steps of a loss-free, order-preserving move, in order (OpenNF's protocol)."""

    HOLD = "hold"          # dst buffers the flow's packets it receives from now on
    REDIRECT = "redirect"  # both rules now point at dst
    BARRIER = "barrier"    # ... and the switch has applied them: src receives no more packets
    EXPORT = "export"      # src drained its queue of the flow, then gave up the flow's state
    IMPORT = "import"      # dst holds the state
    RELEASE = "release"    # dst processes the held packets in order, then the rest


class FlowGone(RuntimeError):
    """The moving flow is no longer in the registry."""


class MigrationOutcome(str, enum.Enum):
    """How one move of a decision ended."""

    DONE = "done"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    SKIPPED = "skipped"


@dataclass
class MigrationRun:
    """One move as it ran. Its times are the controller clock's (seconds): from the start of its
    first step (the destination's hold) to the end of its release, or of its rollback."""

    flow: str
    src: str
    dst: str
    completed: list[Step] = field(default_factory=list)
    outcome: MigrationOutcome = MigrationOutcome.DONE
    error: str = ""
    started_at: float | None = None
    """None for a move that never ran (skipped)."""
    finished_at: float | None = None

    @property
    def duration_ms(self) -> float:
        """The move's own duration: how long the destination held the flow's packets when it is done."""
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return (self.finished_at - self.started_at) * 1000.0

    def view(self) -> dict:
        return {"flow": self.flow, "src": self.src, "dst": self.dst, "outcome": self.outcome.value,
                "steps": [s.value for s in self.completed], "error": self.error,
                "duration_ms": round(self.duration_ms, 3)}


def migration_wall_ms(runs: Iterable[MigrationRun]) -> float:
    """The wall time of the moves that ran: from the first one's start to the last one's end. The
    moves run in parallel, so this is what the twin's `migration_time_ms` (the largest batch) predicts."""
    ran = [run for run in runs if run.started_at is not None and run.finished_at is not None]
    if not ran:
        return 0.0
    return (max(run.finished_at for run in ran) - min(run.started_at for run in ran)) * 1000.0


def migration_busy_ms(runs: Iterable[MigrationRun]) -> float:
    """The sum of the moves' own durations: overlapping moves each count in full."""
    return sum(run.duration_ms for run in runs)


@dataclass
class _Move:
    run: MigrationRun
    flow: SteeredFlow
    src: NFRuntime
    dst: NFRuntime
    exported: list[Any] = field(default_factory=list)
    """The source's exported state, once exported."""


class Migrator:
    """Moves flows between instances loss-free and in order; a failed step rolls the finished ones back."""

    def __init__(self, switch: Switch, config: Callable[[], ControllerConfig], flows: FlowRegistry,
                 clock: Callable[[], float] = time.monotonic):
        self._switch = switch
        self._config = config
        self._flows = flows
        self._clock = clock
        self._kill_point = kill_point()

    def migrate_all(self, moves: list[tuple[SteeredFlow, NFRuntime, NFRuntime]]) -> list[MigrationRun]:
        """Move several flows together, step by step: every destination holds, every flow's rules move
        (one atomic bundle per flow), one barrier, then each source exports once drained, each
        destination imports and releases. Per flow the order is OpenNF's, so each move is loss-free
        and order-preserving; together they share one barrier and one quiet time instead of paying
        them once per flow (a source drains all its moved flows at once). A flow whose step fails is
        rolled back alone; a failed barrier rolls back every flow whose rules moved.
        """
        config = self._config()
        every = [_Move(MigrationRun(flow.key, src.id, dst.id), flow, src, dst) for flow, src, dst in moves]
        steps: tuple[tuple[Step, Callable[[_Move], Any]], ...] = (
            (Step.HOLD, lambda m: m.dst.channel.hold(m.flow.five_tuple)),
            (Step.REDIRECT, lambda m: self._point(m.flow, m.dst)),
            (Step.EXPORT, lambda m: m.exported.append(self._export(m, config.quiet_ms))),
            (Step.IMPORT, self._import),
            (Step.RELEASE, lambda m: m.dst.channel.release(m.flow.five_tuple)),
        )
        moving = every
        for step, do in steps:
            moving = self._each(moving, step, do)
            if step is Step.REDIRECT and moving:
                moving = self._barrier(moving, config.barrier_timeout_s)
                maybe_kill(self._kill_point, Step.BARRIER.value, 1 if moving else 0)
        return [move.run for move in every]

    def _each(self, moving: list[_Move], step: Step, do: Callable[[_Move], Any]) -> list[_Move]:
        """Do one step for every move still going; the moves that fail it are rolled back and drop out."""
        still = []
        for move in moving:
            if step is Step.HOLD:
                move.run.started_at = self._clock()
            try:
                do(move)
            except Exception as error:  # noqa: BLE001 - any NF or switch failure: undo, report, keep the loop alive
                self._fail(move, step, error)
                continue
            move.run.completed.append(step)
            if step is Step.RELEASE:
                move.run.finished_at = self._clock()
            still.append(move)
            maybe_kill(self._kill_point, step.value, len(still))
        return still

    def _export(self, move: _Move, quiet_ms: float) -> Any:
        """The source's state of the flow. A source gone (its process died: the connection is refused or
        closed) after the flow's rules moved finishes the move without its state: rolling back would send the
        flow to the dead instance, and the destination already holds its packets."""
        try:
            return move.src.channel.export(move.flow.five_tuple, quiet_ms)
        except ConnectionError as error:
            move.run.error = f"export failed: {error}; source gone, moved without its state"
            LOG.warning("migration of %s: %s", move.flow.key, move.run.error)
            return None

    @staticmethod
    def _import(move: _Move) -> None:
        """The destination merges the exported state; then the source may drop the copy it kept of it."""
        move.dst.channel.import_(move.flow.five_tuple, move.exported[0])
        acknowledge(move.src, move.flow.five_tuple, move.exported[0])

    def _barrier(self, moving: list[_Move], timeout_s: float) -> list[_Move]:
        """One barrier for every redirected move; if it fails, all of them roll back."""
        try:
            self._switch.barrier(timeout_s)
        except Exception as error:  # noqa: BLE001 - any switch failure: undo, report, keep the loop alive
            for move in moving:
                self._fail(move, Step.BARRIER, error)
            return []
        for move in moving:
            move.run.completed.append(Step.BARRIER)
        return moving

    def _fail(self, move: _Move, step: Step, error: Exception) -> None:
        move.run.error = f"{step.value} failed: {error}"
        self._roll_back(move.run, move.flow, move.src, move.dst, move.exported)
        move.run.finished_at = self._clock()

    def _point(self, flow: SteeredFlow, nf: NFRuntime) -> None:
        """Both rules of a flow to `nf`. A flow whose rules both idled out since the batch began (it ended; the
        registry forgot it, or it has landed afresh since) is not given rules the registry would not know of."""
        if self._flows.get(flow.key) is not flow:
            raise FlowGone("the flow's rules idled out during the move: it ended")
        flow.steered(nf.id, self._clock())
        self._switch.steer(flow.five_tuple, nf.desc)

    def _roll_back(self, run: MigrationRun, flow: SteeredFlow, src: NFRuntime, dst: NFRuntime,
                   exported: list[Any]) -> None:
        undo: list[tuple[str, Callable[[], Any]]] = []
        if Step.REDIRECT in run.completed or flow.instance == dst.id:
            undo += [("rules back to source", lambda: self._point(flow, src)),
                     ("barrier", lambda: self._switch.barrier(self._config().barrier_timeout_s))]
        if exported:
            undo.append(("state back to source", lambda: src.channel.import_(flow.five_tuple, exported[0])))
        if Step.HOLD in run.completed:
            undo.append(("destination release", lambda: dst.channel.release(flow.five_tuple)))
        failures = []
        for what, do in undo:
            try:
                do()
            except Exception as error:  # noqa: BLE001 - an NF or switch failure of any kind must not stop the loop
                if what == "destination release" and isinstance(error, ConnectionError):
                    run.error += f"; destination gone ({error}): its held packets with it"
                else:
                    failures.append(f"{what}: {error}")
        run.outcome = MigrationOutcome.ROLLBACK_FAILED if failures else MigrationOutcome.ROLLED_BACK
        if failures:
            run.error += "; rollback: " + "; ".join(failures)
        LOG.warning("migration of %s from %s to %s %s: %s", flow.key, src.id, dst.id, run.outcome.value, run.error)


class Executor:
    """Carries out a decision's action and records what happened in its `DecisionRecord`; every
    completed move's duration becomes a sample of its pair's migration latency."""

    def __init__(self, nfs: dict[str, NFRuntime], flows: FlowRegistry, latency: MigrationLatency,
                 config: Callable[[], ControllerConfig], clock: Callable[[], float]):
        self.nfs = nfs
        self.flows = flows
        self.latency = latency
        self._config = config
        self._clock = clock

    def execute(self, switch: Switch, record: DecisionRecord) -> None:
        """Start the action's instances, move its flows, then stop the instances it left empty."""
        record.executed = True
        for instance in record.action.start:
            if error := self._set_active(instance, True):
                record.error = error
            else:
                record.started.append(instance)
        record.migrations.extend(self._migrate(switch, record.action.migrations))
        for instance in record.action.stop:
            if self.flows.on(instance):
                record.error = f"{instance} still holds flows after the moves: not stopped"
            elif error := self._set_active(instance, False):
                record.error = error
            else:
                record.stopped.append(instance)

    def _set_active(self, instance: str, active: bool) -> str:
        """Activate or deactivate an NF: '' when it did, else what went wrong."""
        nf = self.nfs[instance]
        try:
            (nf.channel.activate if active else nf.channel.deactivate)()
        except Exception as error:  # noqa: BLE001 - an NF or switch failure of any kind must not stop the loop
            return f"could not {'activate' if active else 'deactivate'} {instance}: {error}"
        nf.active = active
        return ""

    def _migrate(self, switch: Switch, moves: tuple[Migration, ...]) -> list[MigrationRun]:
        """The runs of `moves`, in their order; a move whose flow or instances changed since the
        decision is skipped."""
        runs: dict[int, MigrationRun] = {}
        batch: list[tuple[int, tuple[SteeredFlow, NFRuntime, NFRuntime]]] = []
        for k, move in enumerate(moves):
            flow, src, dst = self.flows.get(move.flow), self.nfs[move.src], self.nfs[move.dst]
            if flow is None or flow.instance != src.id or not dst.usable or not src.alive or src.stalled:
                runs[k] = MigrationRun(move.flow, move.src, move.dst, outcome=MigrationOutcome.SKIPPED,
                                       error="flow gone, moved, or an instance is not usable")
            else:
                batch.append((k, (flow, src, dst)))
        migrator = Migrator(switch, self._config, self.flows, self._clock)
        for (k, _), run in zip(batch, migrator.migrate_all([move for _, move in batch])):
            runs[k] = run
            if run.outcome is MigrationOutcome.DONE:
                self.latency.record(run.src, run.dst, run.duration_ms)
        return [runs[k] for k in sorted(runs)]
