"""The testbed's controller probe (mininet_topos.testbed.ProbedController): a TCP connect, so a binary
OpenFlow hello cannot break the network's start as Mininet's telnet probe can."""
from __future__ import annotations

import socket
import threading

from mininet_topos.testbed import ProbedController

OPENFLOW_HELLO = bytes.fromhex("0400000800000001") + b"\xff\xfe"  # not UTF-8


def test_a_listener_that_greets_in_binary_is_listening():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def greet():
        connection, _ = server.accept()
        connection.sendall(OPENFLOW_HELLO)
        connection.close()

    threading.Thread(target=greet, daemon=True).start()
    probe = ProbedController.__new__(ProbedController)  # the probe needs no node shell
    assert probe.isListening("127.0.0.1", port)
    server.close()


def test_a_closed_port_is_not_listening():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.close()
    assert not ProbedController.__new__(ProbedController).isListening("127.0.0.1", port)
