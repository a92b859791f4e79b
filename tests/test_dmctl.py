"""dmctl against a small HTTP server that serves a real (switch-less) controller core's views."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from controller_app import dmctl
from controller_app.views import decisions_view, state_view
from tests.controller_rig import overload_nf1, run_period


@pytest.fixture
def api(rig):
    flows = overload_nf1(rig)
    run_period(rig, {t: 12 for t in flows})  # a scale-out decision, executed
    run_period(rig, {t: 12 for t in flows})  # the state after it
    core = rig.controller

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            url = urlparse(self.path)
            views = {"/deepmigration/v1/state": lambda: state_view(core),
                     "/deepmigration/v1/decisions": lambda: decisions_view(
                         core, int(parse_qs(url.query).get("limit", ["20"])[0]))}
            body, status = (json.dumps(views[url.path]()), 200) if url.path in views else ('{"error": "no"}', 404)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_state_table_has_a_row_per_instance(api, capsys):
    assert dmctl.main(["--url", api, "state"]) == 0
    out = capsys.readouterr().out
    assert "switch connected" in out and "mode auto" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(rows) == {"nf1", "nf2", "nf3"}
    assert rows["nf1"][1] == "active" and float(rows["nf1"][2]) < 60.0  # the decision relieved nf1


def test_decisions_lists_the_scale_out(api, capsys):
    assert dmctl.main(["--url", api, "decisions", "-n", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["id", "time", "scenario"]
    scale_out = [line.split() for line in lines[1:] if line.split()[2] == "scale_out"]
    assert scale_out and scale_out[0][4] == "policy" and int(scale_out[0][6]) > 0  # moves done


def test_unreachable_controller_is_a_clean_error(capsys):
    assert dmctl.main(["--url", "http://127.0.0.1:1", "state"]) == 1
    assert "cannot reach the controller" in capsys.readouterr().err


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        dmctl.main(["decisions", "-n", "0"])
