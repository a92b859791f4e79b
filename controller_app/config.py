"""What the controller is told: the cluster it runs (topology, NF instances) and how it decides.

Two inputs, both JSON files:

* the **cluster description**, written by whoever builds the network (`mininet_topos`): the
  switch's dpid and, per host, its role, switch port and MAC, plus each NF's capacity, buffer,
  processing latency, initial activity and control socket;
* the **controller config**: thresholds, period, policy, mode, the stabilizer's settings, the REST
  write token and the transition log. Everything except the token and the log path can be changed at run time over
  REST; `ControllerConfig.updated` is the one place such a change is validated.

Paths come from Ryu options (`--deepmigration-cluster`, `--deepmigration-config`, available
on the command line when `ryu-manager --user-flags controller_app/config.py` loads this file,
and always as `cluster=`/`config=` in a `[deepmigration]` section of a `--config-file`) or from
the environment variables DEEPMIGRATION_CLUSTER and DEEPMIGRATION_CONFIG.
Without a cluster path the controller waits for the description of a cluster started by hand at
`mininet_topos.run_dir.CLUSTER_PATH`; without a config it runs `LIVE_DEFAULTS`.
"""
from __future__ import annotations

import enum
import json
import math
import os
import re
import secrets
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from controller_app.deviation import DeviationConfig, DeviationError
from gnn_policy.registry import POLICY_NAMES
from gnn_policy.stabilizer import StabilizerConfig, StabilizerError
from twin.params import Thresholds

OPTION_GROUP = "deepmigration"
CLUSTER_ENV = "DEEPMIGRATION_CLUSTER"
CONFIG_ENV = "DEEPMIGRATION_CONFIG"
MIN_PERIOD_S, MAX_PERIOD_S = 0.1, 3600.0
MIN_TOKEN_LENGTH = 16
"""A shorter REST token is refused: the default is 32 random URL-safe characters."""
MAX_RULE_IDLE_TIMEOUT_S = 0xFFFF
"""OpenFlow's idle_timeout is a 16-bit field."""
MAX_NF_STALL_PERIODS = 100
"""Beyond this many periods a silent NF is dead, whatever the config says."""
OFPP_MAX = 0xFFFFFF00
"""The highest OpenFlow 1.3 switch port number; 0 and the numbers above are reserved."""
MAX_DPID = 2**64 - 1
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


class ConfigError(ValueError):
    """A configuration value the controller cannot run with; `field` names it."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class Mode(str, enum.Enum):
    AUTO = "auto"
    """Detect, decide and execute every period."""
    DRY_RUN = "dry-run"
    """Detect and decide, log the decision, execute nothing."""
    MANUAL = "manual"
    """Detect only; migrations come from POST /migrations."""


# --- cluster description ---------------------------------------------------------------------
@dataclass(frozen=True)
class HostPort:
    name: str
    port: int
    mac: str


@dataclass(frozen=True)
class NFDescription:
    instance: str
    host: HostPort
    capacity_pps: float
    buffer_packets: float
    processing_ms: float
    active: bool
    socket: str


@dataclass(frozen=True)
class ClusterDescription:
    dpid: int
    source: HostPort
    sink: HostPort
    nfs: tuple[NFDescription, ...]

    @classmethod
    def from_dict(cls, data: dict) -> ClusterDescription:
        if not isinstance(data, dict):
            raise ConfigError("the cluster description must be a JSON object")
        hosts = _require(data, "hosts", list, "cluster")
        by_role: dict[str, list[dict]] = {"source": [], "sink": [], "nf": []}
        for k, host in enumerate(hosts):
            where = f"hosts[{k}]"
            if not isinstance(host, dict):
                raise ConfigError(f"{where} must be an object", where)
            role = _require(host, "role", str, where)
            if role not in by_role:
                raise ConfigError(f"{where}.role is {role!r}; expected source, sink or nf", f"{where}.role")
            by_role[role].append(host)
        for role in ("source", "sink"):
            if len(by_role[role]) != 1:
                raise ConfigError(f"the cluster needs exactly one {role} host, found {len(by_role[role])}", role)
        if not by_role["nf"]:
            raise ConfigError("the cluster has no nf host", "hosts")
        nfs = tuple(_nf(host) for host in by_role["nf"])
        ports = [_host(h).port for h in hosts]
        if len(set(ports)) != len(ports):
            raise ConfigError("two hosts share a switch port", "hosts")
        instance_ids = [nf.instance for nf in nfs]
        shared = sorted({i for i in instance_ids if instance_ids.count(i) > 1})
        if shared:
            raise ConfigError(f"two NF hosts share the instance id {shared[0]!r}", "hosts")
        dpid = _integer(_require(data, "dpid", int, "cluster"), 0, MAX_DPID, "cluster.dpid")
        return cls(dpid, _host(by_role["source"][0]), _host(by_role["sink"][0]), nfs)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClusterDescription:
        return cls.from_dict(_read_json(path, "cluster description"))

    def nf(self, instance: str) -> NFDescription:
        return next(nf for nf in self.nfs if nf.instance == instance)


def _host(host: dict) -> HostPort:
    name = _nonempty(_require(host, "name", str, "host"), "host.name")
    port = _integer(_require(host, "port", int, name), 1, OFPP_MAX, f"{name}.port")
    mac = _require(host, "mac", str, name)
    if not _MAC.fullmatch(mac):
        raise ConfigError(f"{name}.mac is {mac!r}, not a MAC address such as 00:00:00:00:00:01", f"{name}.mac")
    return HostPort(name, port, mac)


def _nf(host: dict) -> NFDescription:
    where = host.get("name", "nf host")
    number = (int, float)
    return NFDescription(
        instance=_nonempty(_require(host, "instance", str, where), f"{where}.instance"),
        host=_host(host),
        capacity_pps=_finite(_require(host, "capacity_pps", number, where), f"{where}.capacity_pps", above=0),
        buffer_packets=_finite(_require(host, "buffer_packets", number, where), f"{where}.buffer_packets", above=0),
        processing_ms=_finite(_require(host, "processing_ms", number, where), f"{where}.processing_ms", least=0),
        active=_require(host, "active", bool, where),
        socket=_nonempty(_require(host, "control_socket", str, where), f"{where}.control_socket"),
    )


# --- controller config -------------------------------------------------------------------------
@dataclass(frozen=True)
class ControllerConfig:
    thresholds: Thresholds = Thresholds()
    period_s: float = 1.0
    policy: str = "ofm"
    mode: Mode = Mode.AUTO
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    """REST write token (`Authorization: Bearer <token>`); random when the config names none."""
    transition_log: str = "deepmigration-transitions.jsonl"
    seed: int = 0
    quiet_ms: int = 20
    """How long the source NF must see no packet of a flow before it exports the flow's state."""
    rule_idle_timeout_s: int = 10
    """Idle timeout of the per-flow rules; a flow is forgotten once both its rules expired."""
    nf_timeout_s: float = 2.0
    nf_stall_periods: int = 3
    """Consecutive periods whose report times out (the NF stalls: a process stopped or starved) before the NF
    is treated as dead and its flows re-steered. Until then it is *stalled*: no new flow lands on it and no move
    touches it, but its flows stay, so the packets it queued are not overtaken. A refused or closed connection
    (the process is gone) is a death at once. 1: a timed-out report is a death too."""
    barrier_timeout_s: float = 2.0
    stabilizer: StabilizerConfig = StabilizerConfig(enabled=False)
    """`gnn_policy.stabilizer` between the state and the policy; off unless the config turns it on (dm-demo
    does), so that a config written before it keeps its behaviour."""
    explore: float = 0.0
    """Probability per decision of a random valid migration set instead of the policy's
    (gnn_policy.exploration; dm-demo --explore), so that recorded data covers more than one policy."""
    record_log: str = ""
    """Where each period's full transition is appended (controller_app.recording; dm-demo --record); empty: none."""
    deviation: DeviationConfig = DeviationConfig()
    """The twin's deviation estimate and the fallback to the stabilized baseline (controller_app.deviation)."""
    checkpoint: str = ""
    """The network the deepmigration policies load (`dm-demo --checkpoint`); empty: the shipped one."""
    control_sampling: bool = False
    """The control head draws act/hold and the target from π instead of taking the most likely (seeded by
    `seed`): on-policy learning on the testbed (`dm-demo --learn`)."""

    RUNTIME_FIELDS = ("thresholds", "period_s", "policy", "mode", "stabilizer", "deviation")
    """What PUT /config may change."""

    def __post_init__(self) -> None:
        _check_period(self.period_s)
        if self.policy not in POLICY_NAMES:
            raise ConfigError(f"unknown policy {self.policy!r}; known: {', '.join(POLICY_NAMES)}", "policy")
        if len(self.token) < MIN_TOKEN_LENGTH:  # never echoed: it is a secret, however weak
            raise ConfigError(f"the REST token must have at least {MIN_TOKEN_LENGTH} characters, not "
                              f"{len(self.token)}", "token")
        for name, top in (("seed", None), ("quiet_ms", None), ("rule_idle_timeout_s", MAX_RULE_IDLE_TIMEOUT_S)):
            _integer(getattr(self, name), 0, top, name)
        _integer(self.nf_stall_periods, 1, MAX_NF_STALL_PERIODS, "nf_stall_periods")
        for name in ("nf_timeout_s", "barrier_timeout_s"):
            _finite(getattr(self, name), name, above=0)
        if not (_is_number(self.explore) and 0.0 <= self.explore <= 1.0):
            raise ConfigError(f"explore must be a probability in [0, 1], not {self.explore!r}", "explore")
        if self.checkpoint and not os.path.isfile(self.checkpoint):
            raise ConfigError(f"checkpoint {self.checkpoint!r} is not a file", "checkpoint")

    def policy_options(self) -> dict:
        """What `gnn_policy.registry.make_policy` is given besides the name and seed."""
        return {"checkpoint": self.checkpoint or None, "sample": self.control_sampling}

    @classmethod
    def from_dict(cls, data: dict) -> ControllerConfig:
        if not isinstance(data, dict):
            raise ConfigError("the controller config must be a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field {unknown[0]!r}", unknown[0])
        config = cls().updated(data, allowed=tuple(known))
        _check_writable_file(config.transition_log, "transition_log")
        return config

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> ControllerConfig:
        return cls() if path is None else cls.from_dict(_read_json(path, "controller config"))

    def updated(self, patch: Any, allowed: tuple[str, ...] = RUNTIME_FIELDS) -> ControllerConfig:
        """This config with `patch` (a JSON object, thresholds given partially) applied and checked."""
        if not isinstance(patch, dict):
            raise ConfigError("the config change must be a JSON object")
        changes: dict[str, Any] = {}
        for name, value in patch.items():
            if name not in allowed:
                raise ConfigError(f"config field {name!r} cannot be changed here; allowed: {', '.join(allowed)}",
                                  name)
            changes[name] = _coerce(name, value, self)
        try:
            return replace(self, **changes)
        except ConfigError:
            raise
        except (TypeError, ValueError) as error:
            raise ConfigError(str(error)) from None

    def public(self) -> dict:
        """The JSON view served by GET /config (never the token)."""
        return {"thresholds": asdict(self.thresholds), "period_s": self.period_s, "policy": self.policy,
                "mode": self.mode.value, "policies": list(POLICY_NAMES), "modes": [m.value for m in Mode],
                "stabilizer": self.stabilizer.to_dict(), "deviation": self.deviation.to_dict()}


LIVE_DEFAULTS = {"policy": "deepmigration", "stabilizer": {"enabled": True}, "quiet_ms": 50,
                 "rule_idle_timeout_s": 3, "nf_timeout_s": 10.0}
"""The config of `ryu-manager controller_app.app` given none (auto mode), and dm-demo's defaults: the shipped
policy with the stabilizer, a 50 ms quiet time, a 3 s rule idle timeout, 10 s for an NF to drain a full buffer."""


def _coerce(name: str, value: Any, current: ControllerConfig) -> Any:
    if name == "thresholds":
        if not isinstance(value, dict):
            raise ConfigError("thresholds must be an object with high, low and/or var", name)
        unknown = sorted(set(value) - {"high", "low", "var"})
        if unknown:
            raise ConfigError(f"unknown threshold {unknown[0]!r}", f"thresholds.{unknown[0]}")
        for key, number in value.items():
            if not _is_number(number):
                raise ConfigError(f"thresholds.{key} must be a number", f"thresholds.{key}")
        try:
            return replace(current.thresholds, **{k: float(v) for k, v in value.items()})
        except ValueError as error:
            raise ConfigError(str(error), name) from None
    if name == "stabilizer":
        try:
            return current.stabilizer.updated(value)
        except StabilizerError as error:
            raise ConfigError(f"stabilizer: {error}", f"stabilizer.{error.field}" if error.field else name) from None
    if name == "deviation":
        try:
            return current.deviation.updated(value)
        except DeviationError as error:
            raise ConfigError(f"deviation: {error}", f"deviation.{error.field}" if error.field else name) from None
    if name == "mode":
        try:
            return Mode(value)
        except ValueError:
            raise ConfigError(f"mode must be one of {', '.join(m.value for m in Mode)}", name) from None
    if name in ("period_s", "nf_timeout_s", "barrier_timeout_s", "explore"):
        if not _is_number(value):
            raise ConfigError(f"{name} must be a number", name)
        return float(value)
    if name == "control_sampling" and not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, not {value!r}", name)
    if name in ("policy", "token", "transition_log", "record_log", "checkpoint") and not isinstance(value, str):
        raise ConfigError(f"{name} must be a string", name)
    if name in ("seed", "quiet_ms", "rule_idle_timeout_s", "nf_stall_periods") and (
            not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{name} must be an integer, not {value!r}", name)
    return value


def _check_period(period_s: float) -> None:
    if not (_is_number(period_s) and MIN_PERIOD_S <= period_s <= MAX_PERIOD_S):
        raise ConfigError(f"period_s must be between {MIN_PERIOD_S} and {MAX_PERIOD_S} seconds", "period_s")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any, low: int, high: int | None, where: str) -> int:
    """`value`, an int (not a bool) in low..high (no upper bound when high is None)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        span = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{where} must be an integer {span}, not {value!r}", where)
    return value


def _finite(value: float, where: str, *, above: float | None = None, least: float | None = None) -> float:
    """`value` as a finite float, > `above` or >= `least`."""
    if not (_is_number(value) and (above is None or value > above) and (least is None or value >= least)):
        bound = f"> {above:g}" if above is not None else f">= {least:g}"
        raise ConfigError(f"{where} must be a finite number {bound}, not {value!r}", where)
    return float(value)


def _nonempty(value: str, where: str) -> str:
    if not value.strip():
        raise ConfigError(f"{where} must not be empty (it is {value!r})", where)
    return value


def _check_writable_file(path: str, where: str) -> None:
    """A path the controller can append to: an existing writable file, or a new one (its missing directories
    are made, as controller_app.transitions does) under a writable directory."""
    target = Path(path)
    if not path:
        raise ConfigError(f"{where} must name a file, not be empty ({path!r})", where)
    if target.is_dir():
        raise ConfigError(f"{where} {path!r} is a directory; name a file in it", where)
    existing = next(p for p in (target, *target.absolute().parents) if p.exists())
    if existing != target and not existing.is_dir():
        raise ConfigError(f"{where} {path!r}: {str(existing)!r} is not a directory", where)
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"{where} {path!r} is not writable", where)


def _require(data: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ConfigError(f"{where} has no {key!r}", f"{where}.{key}")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ConfigError(f"{where}.{key} has the wrong type ({type(value).__name__}: {shown})", f"{where}.{key}")
    return value


def _read_json(path: str | os.PathLike, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"cannot read the {what} {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"the {what} {path} is not JSON: {error}") from None


# --- Ryu options -------------------------------------------------------------------------------
def register_ryu_options() -> None:
    """Declare `[deepmigration] cluster/config`; as CLI flags too when Ryu has not parsed its args yet."""
    from oslo_config.cfg import ArgsAlreadyParsedError
    from ryu import cfg

    options = [cfg.StrOpt("cluster", help=f"cluster description JSON (or ${CLUSTER_ENV})"),
               cfg.StrOpt("config", help=f"controller config JSON (or ${CONFIG_ENV})")]
    try:
        cfg.CONF.register_cli_opts(options, group=OPTION_GROUP)
    except ArgsAlreadyParsedError:
        cfg.CONF.register_opts(options, group=OPTION_GROUP)


def ryu_paths() -> tuple[str | None, str | None]:
    """The cluster description and controller config paths: Ryu options first, then the environment."""
    from ryu import cfg

    group = getattr(cfg.CONF, OPTION_GROUP)
    return (group.cluster or os.environ.get(CLUSTER_ENV) or None,
            group.config or os.environ.get(CONFIG_ENV) or None)


if __name__ != "controller_app.config":  # loaded as a file by `ryu-manager --user-flags`, before arg parsing
    register_ryu_options()
