"""The Ryu application: `ryu-manager controller_app.app`.

A thin OpenFlow 1.3 shell over `controller_app.core.Controller`: one handler per OpenFlow
concern (switch features, port status, packet-in, flow and port stats, flow removed, barrier,
disconnect) translates the message and hands it to the core; `OpenFlowSwitch` turns the core's
requests back into flow mods. A green thread asks for statistics and runs one period of the
decision loop every `period_s` seconds. The REST API (`controller_app.rest`) is served by Ryu's
WSGI server, bound to 127.0.0.1 unless `--wsapi-host` says otherwise.

The cluster it runs is the one its description file describes (`--deepmigration-cluster`,
DEEPMIGRATION_CLUSTER, or else the well-known `mininet_topos.run_dir.CLUSTER_PATH` of a cluster started by
hand, waited for). The file is watched: a new description (mn restarted) gets a fresh controller core with
the current config, and a removed one (mn exited) idles the loop while the REST API keeps serving the last
cluster's state and decisions (docs/testbed.md, "By hand").
"""
from __future__ import annotations

import ipaddress
import itertools
import json
import logging
import time
from pathlib import Path

from eventlet import tpool
from ryu import cfg
from ryu.app.wsgi import WSGIApplication
from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from ryu.lib import hub
from ryu.lib.packet import ethernet, ipv4, ipv6, packet, tcp, udp
from ryu.ofproto import nicira_ext, ofproto_v1_3

from controller_app import memwatch, native_heap, rest
from controller_app.config import (
    LIVE_DEFAULTS,
    ClusterDescription,
    ConfigError,
    ControllerConfig,
    NFDescription,
    register_ryu_options,
    ryu_paths,
)
from controller_app.core import Controller
from controller_app.steering import SwitchError
from gnn_policy.registry import make_policy
from mininet_topos.frames import ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP
from mininet_topos.run_dir import CLUSTER_PATH
from twin.flow import FiveTuple

LOG = logging.getLogger(__name__)

FLOW_COOKIE = 0xD3E9
"""Marks the per-flow steering rules, so stats requests and flow-removed messages concern only them."""
FLOW_PRIORITY, NF_TO_SINK_PRIORITY, TABLE_MISS_PRIORITY = 100, 10, 0
DEFAULT_PORTS_PRIORITY, DEFAULT_IP_PRIORITY = 2, 1
"""The default steering's rules: IP from the source port; in the landing table TCP and UDP, then the rest."""
IP_PORT_FIELDS = {IPPROTO_TCP: ("tcp_src", "tcp_dst"), IPPROTO_UDP: ("udp_src", "udp_dst")}
ADDRESS_FIELDS = {ETH_P_IP: ("ipv4_src", "ipv4_dst", 32), ETH_P_IPV6: ("ipv6_src", "ipv6_dst", 128)}
"""Per IP version (its ethertype): the match fields of a flow's addresses and their width in bits."""
LANDING_TABLE = 1
"""Where a new flow's packet goes on once the default steering put its NF's port in reg0."""
LANDING_PROTOCOLS = (IPPROTO_TCP, IPPROTO_UDP, None)
"""The landing table's rules, per IP version: TCP, UDP, any other protocol (None)."""
LANDING_COPY_BYTES = 128
"""How much of a new flow's packet the controller gets: its headers."""
LANDING_MARK = bytes.fromhex("02ddfe00")
"""The first four bytes of a landing copy's destination MAC; the last two are the NF's switch port."""
UNCONFIRMED_KEPT = 4096
NX_LEARN_F_SEND_FLOW_REM = 1
"""OVS's learn flag: the learned rules send flow-removed messages, as `steer`'s do."""

register_ryu_options()
cfg.CONF.set_default("wsapi_host", rest.LOCALHOST)
native_heap.limit_arenas()  # before any thread: the policy's threads share 2 malloc arenas (RSS flat; docs/testbed.md)


class OpenFlowSwitch:
    """The core's `Switch` on one OpenFlow 1.3 datapath."""

    def __init__(self, datapath, source_port: int, idle_timeout_s: int):
        self.datapath = datapath
        self._source_port = source_port
        self._idle_timeout_s = idle_timeout_s
        self._barriers: dict[int, hub.Event] = {}
        self._bundle_ids = itertools.count(1)
        # xid -> what it was, for the messages a barrier vouches for (bundles); an error reply names one
        self._unconfirmed: dict[int, str] = {}
        self._errors: list[str] = []
        self.adopting_xid: int | None = None
        """The xid of the flow-stats request of an adopting connect, until its reply is complete."""

    def reset(self, cluster: ClusterDescription, target: NFDescription | None,
              flows: list[tuple[FiveTuple, NFDescription]]) -> None:
        """One atomic bundle: wipe the rules, then the table-miss rule, every NF port to the sink,
        the default steering and both directions' rules of every flow in `flows`."""
        parser, ofp = self.datapath.ofproto_parser, self.datapath.ofproto
        mods = [parser.OFPFlowMod(self.datapath, command=ofp.OFPFC_DELETE, table_id=ofp.OFPTT_ALL,
                                  out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY), *self._base_mods(cluster, target)]
        for five_tuple, nf in flows:
            mods += self._steering_mods(five_tuple, nf)
        self._bundle(mods, f"reset with {len(flows)} flows")

    def adopt(self, cluster: ClusterDescription, target: NFDescription | None) -> None:
        """The base rules and the default steering (unless `target` is None) in one atomic bundle over the old
        ones, every per-flow rule kept; then a flow-stats request for those rules, whose reply (`adopting_xid`)
        the app hands to the core."""
        # no NF has answered this controller yet (target None): the old default steering goes on meanwhile
        self._bundle(self._base_mods(cluster, target, default=target is not None),
                     "base rules, adopting the per-flow rules")
        parser = self.datapath.ofproto_parser
        request = parser.OFPFlowStatsRequest(self.datapath, cookie=FLOW_COOKIE, cookie_mask=0xFFFFFFFFFFFFFFFF)
        self.datapath.set_xid(request)
        self.adopting_xid = request.xid
        if not self.datapath.send_msg(request):
            raise SwitchError("switch disconnected")

    def _base_mods(self, cluster: ClusterDescription, target: NFDescription | None, *, default: bool = True) -> list:
        """The table-miss rule, the default steering (if `default`), every NF port to the sink and the landing
        table."""
        parser, ofp = self.datapath.ofproto_parser, self.datapath.ofproto
        mods = [self._flow_mod(TABLE_MISS_PRIORITY, parser.OFPMatch(),
                               [parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)])]
        mods += self._default_rules(target) if default else []
        mods += [self._flow_mod(NF_TO_SINK_PRIORITY, parser.OFPMatch(in_port=nf.host.port),
                                [parser.OFPActionOutput(cluster.sink.port)]) for nf in cluster.nfs]
        return mods + [self._landing_rule(eth_type, proto) for eth_type in ADDRESS_FIELDS for proto in LANDING_PROTOCOLS]

    def set_default_steering(self, target: NFDescription | None) -> None:
        """Overwrite the default rules (one flow mod per IP version, each applied atomically)."""
        for mod in self._default_rules(target):
            if not self.datapath.send_msg(mod):
                raise SwitchError("switch disconnected")

    def steer(self, five_tuple: FiveTuple, nf: NFDescription) -> None:
        """Both directions' rules in one atomic ONF bundle (OpenFlow 1.3 extension, supported by OVS).

        With two separate flow mods the switch applies them one after the other: for a moment the
        forward direction already reaches the new instance while the reverse still reaches the old
        one, and the old one forwards packets that come after some the new one is holding.
        The bundle's outcome is known at the next `barrier`: an error reply for it makes that fail.
        """
        self._bundle(self._fresh_steering_mods(five_tuple, nf), f"steering {five_tuple} to {nf.instance}")

    def _fresh_steering_mods(self, five_tuple: FiveTuple, nf: NFDescription) -> list:
        """Both directions' rules, each deleted first: OVS gives a rule that an add replaces the replaced
        rule's last-used time, so a flow idle for nearly the idle timeout would lose its new rules at once
        (and land afresh, elsewhere). Deleted and added in one bundle, they idle out a full timeout later."""
        parser, ofp = self.datapath.ofproto_parser, self.datapath.ofproto
        deletes = [parser.OFPFlowMod(self.datapath, command=ofp.OFPFC_DELETE_STRICT, priority=FLOW_PRIORITY,
                                     match=self.match(direction), out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY)
                   for direction in (five_tuple, five_tuple.reverse())]
        return deletes + self._steering_mods(five_tuple, nf)

    def _steering_mods(self, five_tuple: FiveTuple, nf: NFDescription) -> list:
        ofp = self.datapath.ofproto
        return [self._flow_mod(FLOW_PRIORITY, self.match(direction),
                               [self.datapath.ofproto_parser.OFPActionOutput(nf.host.port)],
                               cookie=FLOW_COOKIE, idle_timeout=self._idle_timeout_s, flags=ofp.OFPFF_SEND_FLOW_REM)
                for direction in (five_tuple, five_tuple.reverse())]

    def _bundle(self, mods: list, what: str) -> None:
        """Send `mods` as one atomic ONF bundle; an error reply for it makes the next `barrier` fail."""
        parser, ofp = self.datapath.ofproto_parser, self.datapath.ofproto
        bundle, flags = next(self._bundle_ids) & 0xFFFFFFFF, ofp.ONF_BF_ATOMIC
        messages = [parser.ONFBundleCtrlMsg(self.datapath, bundle, ofp.ONF_BCT_OPEN_REQUEST, flags, []),
                    *(parser.ONFBundleAddMsg(self.datapath, bundle, flags, mod, []) for mod in mods),
                    parser.ONFBundleCtrlMsg(self.datapath, bundle, ofp.ONF_BCT_COMMIT_REQUEST, flags, [])]
        for message in messages:
            self.datapath.set_xid(message)
            self._unconfirmed[message.xid] = f"bundle {bundle} {what}"
            if len(self._unconfirmed) > UNCONFIRMED_KEPT:  # steering outside migrations meets no barrier
                del self._unconfirmed[next(iter(self._unconfirmed))]
            if not self.datapath.send_msg(message):
                raise SwitchError("switch disconnected")

    def _default_rules(self, target: NFDescription | None) -> list:
        """IPv4 and IPv6 from the source that no flow's rule matched: name `target`'s port in reg0 and go on in the
        landing table (nothing: drop). A plain rule rather than a select group on purpose: OVS runs a
        select group as a hash and a recirculation whose frozen remainder (the group) is thawed by later
        upcalls without looking at table 0 again, so a packet that follows the flow's first one while
        the group changes could pick another bucket and re-learn the flow's rules elsewhere."""
        parser = self.datapath.ofproto_parser
        actions = [parser.NXActionRegLoad2(dst="reg0", value=target.host.port),
                   parser.NXActionResubmitTable(table_id=LANDING_TABLE)] if target is not None else []
        return [self._flow_mod(DEFAULT_IP_PRIORITY, parser.OFPMatch(in_port=self._source_port, eth_type=eth_type),
                               actions) for eth_type in ADDRESS_FIELDS]

    def _landing_rule(self, eth_type: int, proto: int | None):
        """A new flow's packet, its NF port in reg0: install the flow's rules for both directions to that
        port (OVS's learn action, so that the next packet already takes them, whatever the controller
        does), send the packet there, then send the controller its headers marked with the port."""
        parser, ofp = self.datapath.ofproto_parser, self.datapath.ofproto
        fields = {"eth_type": eth_type} | ({"ip_proto": proto} if proto else {})
        actions = [self._learn(eth_type, proto, reverse=False), self._learn(eth_type, proto, reverse=True),
                   parser.NXActionOutputReg(ofs_nbits=nicira_ext.ofs_nbits(0, 15), src="reg0", max_len=0),
                   parser.NXActionRegLoad2(dst="eth_dst", value=":".join(f"{b:02x}" for b in LANDING_MARK + bytes(2))),
                   parser.NXActionRegMove(src_field="reg0", dst_field="eth_dst", n_bits=16),
                   parser.OFPActionOutput(ofp.OFPP_CONTROLLER, LANDING_COPY_BYTES)]
        return self._flow_mod(DEFAULT_PORTS_PRIORITY if proto else DEFAULT_IP_PRIORITY, parser.OFPMatch(**fields),
                              actions, table_id=LANDING_TABLE)

    def _learn(self, eth_type: int, proto: int | None, reverse: bool):
        """The learn action installing one direction's rule (the packet's own, or the reverse one),
        with the same match, priority, cookie, idle timeout and flags as `steer`'s, output to reg0."""
        parser = self.datapath.ofproto_parser
        src_field, dst_field, width = ADDRESS_FIELDS[eth_type]
        pairs = [(f"{src_field}_nxm", f"{dst_field}_nxm", width)]
        if proto in IP_PORT_FIELDS:
            src, dst = IP_PORT_FIELDS[proto]
            pairs.append((f"{src}_nxm", f"{dst}_nxm", 16))
        specs = [parser.NXFlowSpecMatch(src=eth_type, dst=("eth_type_nxm", 0), n_bits=16),
                 parser.NXFlowSpecMatch(src=self._source_port, dst=("in_port_nxm", 0), n_bits=16),
                 parser.NXFlowSpecMatch(src=proto if proto else ("ip_proto_nxm", 0), dst=("ip_proto_nxm", 0),
                                        n_bits=8)]
        for a, b, bits in pairs:
            specs += [parser.NXFlowSpecMatch(src=(b if reverse else a, 0), dst=(a, 0), n_bits=bits),
                      parser.NXFlowSpecMatch(src=(a if reverse else b, 0), dst=(b, 0), n_bits=bits)]
        specs.append(parser.NXFlowSpecOutput(src=("reg0", 0), n_bits=16))
        return parser.NXActionLearn(table_id=0, specs=specs, idle_timeout=self._idle_timeout_s,
                                    priority=FLOW_PRIORITY, cookie=FLOW_COOKIE, flags=NX_LEARN_F_SEND_FLOW_REM)

    def barrier(self, timeout_s: float) -> None:
        """Wait until the switch applied every earlier message; raise if it did not, or if it
        answered one of the bundles sent since the last barrier with an error."""
        request = self.datapath.ofproto_parser.OFPBarrierRequest(self.datapath)
        self.datapath.set_xid(request)
        done = self._barriers[request.xid] = hub.Event()
        try:
            if not self.datapath.send_msg(request) or not done.wait(timeout_s):
                raise SwitchError(f"no barrier reply within {timeout_s:g} s")
        finally:
            self._barriers.pop(request.xid, None)
        self._unconfirmed = {xid: what for xid, what in self._unconfirmed.items() if xid > request.xid}
        errors, self._errors = self._errors, []
        if errors:
            raise SwitchError("; ".join(errors))

    def barrier_replied(self, xid: int) -> None:
        if xid in self._barriers:
            self._barriers[xid].set()

    def error_replied(self, xid: int, error: str) -> None:
        """An OpenFlow error; if it answers a bundle message, the next barrier reports it."""
        what = self._unconfirmed.pop(xid, None)
        if what is not None:
            self._errors.append(f"{what}: {error}")

    def request_stats(self) -> None:
        parser, ofp = self.datapath.ofproto_parser, self.datapath.ofproto
        self.datapath.send_msg(parser.OFPFlowStatsRequest(self.datapath, cookie=FLOW_COOKIE,
                                                          cookie_mask=0xFFFFFFFFFFFFFFFF))
        self.datapath.send_msg(parser.OFPPortStatsRequest(self.datapath, 0, ofp.OFPP_ANY))

    def match(self, direction: FiveTuple):
        ports = IP_PORT_FIELDS.get(direction.proto)
        eth_type = ETH_P_IPV6 if ":" in direction.src_ip else ETH_P_IP
        src_field, dst_field, _ = ADDRESS_FIELDS[eth_type]
        fields = {"in_port": self._source_port, "eth_type": eth_type, "ip_proto": direction.proto,
                  src_field: direction.src_ip, dst_field: direction.dst_ip}
        if ports:
            fields |= {ports[0]: direction.src_port, ports[1]: direction.dst_port}
        return self.datapath.ofproto_parser.OFPMatch(**fields)

    def _flow_mod(self, priority: int, match, actions, **options):
        parser, ofp = self.datapath.ofproto_parser, self.datapath.ofproto
        instructions = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)]
        return parser.OFPFlowMod(self.datapath, priority=priority, match=match, instructions=instructions,
                                 **options)


def output_port(stat) -> int | None:
    """The port a rule's apply-actions output to (steering rules, learned or not, have one)."""
    for instruction in stat.instructions:
        for action in getattr(instruction, "actions", ()):
            if hasattr(action, "port"):
                return action.port
    return None


def five_tuple_of(match) -> FiveTuple | None:
    """The directed 5-tuple of a steering rule's match (ports 0 for protocols without ports), IPv4 or IPv6."""
    src_field, dst_field, _ = next((fields for fields in ADDRESS_FIELDS.values() if fields[0] in match),
                                   (None, None, 0))
    if src_field is None:
        return None
    proto = match["ip_proto"]
    ports = IP_PORT_FIELDS.get(proto)
    return FiveTuple(_address(match[src_field]), _address(match[dst_field]), match[ports[0]] if ports else 0,
                     match[ports[1]] if ports else 0, proto)


def _address(text: str) -> str:
    """An address as twin.flow writes it (Ryu's text form of an IPv6 address may differ)."""
    return str(ipaddress.ip_address(text))


def _transport_protocol(pkt, ip) -> int:
    """An IPv6 packet's transport protocol, after its extension headers (OVS's ip_proto)."""
    header = ip.nxt
    for extension in ip.ext_hdrs:
        header = extension.nxt
    return header


WATCH_S = 0.5
"""How often the controller looks at its cluster description file for a change."""


class ClusterWatch:
    """The cluster description file, as it appears, changes and goes away (`check`)."""

    def __init__(self, path: Path):
        self.path = path
        self.present = False
        self._stamp: tuple | None = None
        self._content: object = None

    def check(self) -> ClusterDescription | None:
        """The description to adopt: the file's, if it appeared or its content changed since the last call;
        else None (`present` tells whether it is there). ConfigError for an invalid file, once per change."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self.present, self._stamp, self._content = False, None, None
            return None
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            content = json.loads(self.path.read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read the cluster description {self.path}: {error}") from None
        cluster = ClusterDescription.from_dict(content)
        self.present = True
        if content == self._content:  # rewritten as it was (dm-demo writes it twice)
            return None
        self._content = content
        return cluster


class _CurrentCore:
    """What the REST API serves: the controller of the cluster adopted last; 503 before the first."""

    def __init__(self, app: DeepMigrationApp):
        self._app = app

    def __getattr__(self, name: str):
        if self._app.core is None:
            raise rest.ApiError(503, f"no cluster yet: waiting for its description at {self._app.watch.path}")
        return getattr(self._app.core, name)


class DeepMigrationApp(app_manager.RyuApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]  # noqa: RUF012 - Ryu reads these class attributes
    _CONTEXTS = {"wsgi": WSGIApplication}  # noqa: RUF012

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        memwatch.start(hub.spawn, hub.sleep)  # off unless DEEPMIGRATION_MEMWATCH names a file
        cluster_path, config_path = ryu_paths()
        self._config = ControllerConfig.load(config_path) if config_path else ControllerConfig.from_dict(LIVE_DEFAULTS)
        self.watch = ClusterWatch(Path(cluster_path or CLUSTER_PATH))
        self.core: Controller | None = None
        self.switch: OpenFlowSwitch | None = None
        self._datapath = None
        self._instance_by_port: dict[int, str] = {}
        self._flow_stats: list = []
        self._rules: list = []
        if cluster_path is not None:  # named: it must be there and valid now
            self._adopt(self.watch.check() or ClusterDescription.load(cluster_path))
        else:
            LOG.info("waiting for a cluster description at %s (mn --custom mininet_topos/nf_cluster.py writes it)",
                     self.watch.path)
            make_policy(self._config.policy, seed=self._config.seed)  # its libraries load now, not in the loop
        rest.register(kwargs["wsgi"], _CurrentCore(self))
        if config_path is None:
            LOG.warning("no controller config: REST writes need 'Authorization: Bearer %s'", self._config.token)
        self._loop = hub.spawn(self._run_periods)

    def _adopt(self, cluster: ClusterDescription) -> None:
        """Run `cluster` from now on: a fresh core with the current config, connected to the switch if it is."""
        from mininet_topos.nf_channel import NFClient

        old, config = self.core, self.core.config if self.core is not None else self._config
        self.core = Controller(cluster, config, lambda nf, timeout: NFClient(nf.socket, timeout),
                               offload=tpool.execute)  # a policy may compute for seconds: keep OpenFlow alive
        self._instance_by_port = {nf.host.port: nf.instance for nf in cluster.nfs}
        self.switch = None
        for runtime in old.nfs.values() if old is not None else ():
            runtime.channel.close()
        LOG.info("cluster %s adopted: instances %s, switch %016x", self.watch.path,
                 " ".join(nf.instance for nf in cluster.nfs), cluster.dpid)
        if self._datapath is not None:
            self._connect(self._datapath)

    def _connect(self, datapath) -> None:
        if datapath.id != self.core.cluster.dpid:
            LOG.warning("ignoring switch %016x: the cluster's switch is %016x", datapath.id, self.core.cluster.dpid)
            return
        self.switch = OpenFlowSwitch(datapath, self.core.cluster.source.port, self.core.config.rule_idle_timeout_s)
        self.core.on_switch_connected(self.switch)

    def _follow_cluster(self) -> None:
        """Adopt a new or changed cluster description; say when it went away."""
        was_present = self.watch.present
        try:
            cluster = self.watch.check()
        except ConfigError as error:
            LOG.error("%s; waiting for a valid one", error)
            return
        if cluster is not None:
            self._adopt(cluster)
        elif was_present and not self.watch.present:
            LOG.warning("cluster description %s removed (mn exited?): idle until a new one appears; the REST API "
                        "keeps the last cluster's state and decisions", self.watch.path)
            if self.switch is not None:  # let go before the NFs and ports go down: no re-steering of a cluster
                self.switch = None       # that is being taken apart
                self.core.on_switch_disconnected()

    @property
    def _running(self) -> bool:
        return self.core is not None and self.watch.present

    def _run_periods(self) -> None:
        """Every period: ask for statistics, let the replies arrive, then run one decision period. A period
        changed at run time counts from the current period's start at once (the wait is re-read every 0.1 s).
        Without a cluster (none yet, or its description removed) only the description is watched."""
        while True:
            started = time.monotonic()
            self._follow_cluster()
            if self._running and self.switch is not None:
                self.switch.request_stats()
            while (left := started + (self.core.config.period_s if self._running else WATCH_S)
                    - time.monotonic()) > 0:
                hub.sleep(min(left, 0.1))
            self._follow_cluster()
            if not self._running:
                continue
            try:
                self.core.tick()
            except Exception:  # the loop must outlive any bug in one period
                LOG.exception("decision period failed")

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def switch_features_handler(self, ev):
        """Kept for the cluster of its dpid, now or once its description appears."""
        self._datapath = ev.msg.datapath
        if self.core is not None and self.watch.present:
            self._connect(self._datapath)

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    def disconnect_handler(self, ev):
        if ev.datapath is self._datapath:
            self._datapath = None
        if self.switch is not None and ev.datapath is self.switch.datapath:
            self.switch = None
            self.core.on_switch_disconnected()

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def packet_in_handler(self, ev):
        """A default-steering copy: the new flow's headers, with the port of the instance it landed on in
        the destination MAC (`LANDING_MARK`). Anything else (table misses: non-IP frames, frames from other ports) is
        dropped."""
        msg = ev.msg
        if self.switch is None or msg.datapath is not self.switch.datapath:
            return
        pkt = packet.Packet(msg.data)
        eth, ip = pkt.get_protocol(ethernet.ethernet), pkt.get_protocol(ipv4.ipv4) or pkt.get_protocol(ipv6.ipv6)
        mark = bytes.fromhex(eth.dst.replace(":", "")) if eth is not None else b""
        instance = self._instance_by_port.get(int.from_bytes(mark[4:], "big")) if mark[:4] == LANDING_MARK else None
        if ip is None or instance is None or msg.match["in_port"] != self.core.cluster.source.port:
            return
        l4 = pkt.get_protocol(tcp.tcp) or pkt.get_protocol(udp.udp)
        proto = ip.proto if isinstance(ip, ipv4.ipv4) else _transport_protocol(pkt, ip)
        self.core.on_flow_landed(FiveTuple(_address(ip.src), _address(ip.dst), l4.src_port if l4 else 0,
                                           l4.dst_port if l4 else 0, proto), instance)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def flow_stats_reply_handler(self, ev):
        msg = ev.msg
        if self.switch is None or msg.datapath is not self.switch.datapath:
            return
        if msg.xid == self.switch.adopting_xid:
            self._adopt_rules(msg)
            return
        self._flow_stats += [(t, stat.packet_count, stat.byte_count) for stat in msg.body
                             if (t := five_tuple_of(stat.match)) is not None]
        if not msg.flags & msg.datapath.ofproto.OFPMPF_REPLY_MORE:
            self.core.on_flow_stats(self._flow_stats)
            self._flow_stats = []

    def _adopt_rules(self, msg) -> None:
        """A part of the reply to an adopting connect's flow-stats request: once complete, to the core."""
        self._rules += [(t, self._instance_by_port.get(output_port(stat))) for stat in msg.body
                        if (t := five_tuple_of(stat.match)) is not None]
        if not msg.flags & msg.datapath.ofproto.OFPMPF_REPLY_MORE:
            rules, self._rules, self.switch.adopting_xid = self._rules, [], None
            self.core.on_rules_found(rules)

    @set_ev_cls(ofp_event.EventOFPPortStatsReply, MAIN_DISPATCHER)
    def port_stats_reply_handler(self, ev):
        if self.switch is None or ev.msg.datapath is not self.switch.datapath:
            return
        self.core.on_port_stats([(s.port_no, s.rx_bytes, s.tx_bytes) for s in ev.msg.body
                                 if s.port_no < ev.msg.datapath.ofproto.OFPP_MAX])

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    def flow_removed_handler(self, ev):
        msg = ev.msg
        if self.switch is None or msg.datapath is not self.switch.datapath:
            return
        if msg.reason not in (msg.datapath.ofproto.OFPRR_IDLE_TIMEOUT, msg.datapath.ofproto.OFPRR_HARD_TIMEOUT):
            return  # deleted by this controller (a steer replacing it, a reset): not the flow going quiet
        if msg.cookie == FLOW_COOKIE and (five_tuple := five_tuple_of(msg.match)) is not None:
            try:
                self.core.on_rule_expired(five_tuple, msg.duration_sec + msg.duration_nsec / 1e9)
            except SwitchError as error:  # the switch went away while its expired rule was put back
                LOG.info("rule of %s not put back: %s", five_tuple, error)

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def barrier_reply_handler(self, ev):
        if self.switch is not None:
            self.switch.barrier_replied(ev.msg.xid)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    def error_handler(self, ev):
        msg = ev.msg
        LOG.warning("OpenFlow error type %d code %d for xid %d", msg.type, msg.code, msg.xid)
        if self.switch is not None and msg.datapath is self.switch.datapath:
            self.switch.error_replied(msg.xid, f"OpenFlow error type {msg.type} code {msg.code}")

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def port_status_handler(self, ev):
        msg = ev.msg
        ofp = msg.datapath.ofproto
        down = msg.reason == ofp.OFPPR_DELETE or msg.desc.state & ofp.OFPPS_LINK_DOWN
        LOG.info("port %d %s", msg.desc.port_no, "down" if down else "up")
        if self.watch.present and not self.watch.path.exists():  # mn exiting: the description went first
            self._follow_cluster()  # (only to let go: a new cluster is adopted between periods, never mid-tick)
        if down and self.switch is not None and msg.datapath is self.switch.datapath:
            self.core.on_port_down(msg.desc.port_no)
