"""The REST handlers (controller_app.rest) against hostile bodies, served in-process: Ryu's WSGI
application over the switch-less rig, so that each case takes milliseconds. The live server
(eventlet's, chunked bodies included) is exercised in tests/test_rest_api.py."""
from __future__ import annotations

import io
import json

import pytest
import webob

from controller_app import rest
from tests.controller_rig import make_rig, run_period
from tests.rest_rig import rest_api

TOKEN = "in-process-test-token"
PREFIX = "/deepmigration/v1"


@pytest.fixture
def app(tmp_path):
    """The API of a controller that has seen one period (so it has a state to check actions against)."""
    rig = make_rig(tmp_path, token=TOKEN)
    wsgi = rest_api(rig)
    wsgi.rig = rig
    return wsgi


def send(app, method: str, path: str, body: bytes | None = None, *, chunked: bool = False,
         content_length: int | None = None, token: str | None = TOKEN) -> tuple[int, dict]:
    """One request; `chunked` sends the body without a Content-Length, as eventlet hands a chunked body
    on (decoded, with Transfer-Encoding: chunked); `content_length` overrides the declared length."""
    request = webob.Request.blank(PREFIX + path, method=method)
    if token is not None:
        request.headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        request.environ["wsgi.input"] = io.BytesIO(body)
        request.environ["CONTENT_LENGTH"] = str(len(body) if content_length is None else content_length)
        request.content_type = "application/json"
    if chunked:
        request.environ.pop("CONTENT_LENGTH", None)
        request.headers["Transfer-Encoding"] = "chunked"
    response = request.get_response(app)
    answer = json.loads(response.body)
    if response.status_int >= 400:
        assert answer["status"] == response.status_int
    return response.status_int, answer


def test_deeply_nested_json_is_a_400_naming_the_nesting(app):
    for depth in (100_000, 1_000, 40):
        status, answer = send(app, "PUT", "/config", b"[" * depth + b"]" * depth)
        assert status == 400 and "nested" in answer["error"], (depth, answer)
    status, answer = send(app, "POST", "/migrations", b'{"a":' * 5000 + b"1" + b"}" * 5000)
    assert status == 400 and "nested" in answer["error"]


def test_a_chunked_body_is_read_and_parsed(app):
    status, answer = send(app, "PUT", "/config", b'{"mode": "dry-run"}', chunked=True)
    assert (status, answer["mode"]) == (200, "dry-run")


def test_the_body_limit_holds_on_the_bytes_read_whatever_the_headers_say(app):
    big = json.dumps({"mode": "auto", "pad": "x" * rest.MAX_BODY_BYTES}).encode()
    assert send(app, "PUT", "/config", big)[0] == 413  # declared
    status, answer = send(app, "PUT", "/config", big, chunked=True)  # not declared
    assert status == 413 and str(rest.MAX_BODY_BYTES) in answer["error"]
    # A Content-Length shorter than the body: only the declared bytes are read (and are no JSON).
    status, answer = send(app, "PUT", "/config", b'{"mode": "manual"}', content_length=5)
    assert status == 400 and "not valid JSON" in answer["error"]
    assert app.rig.controller.config.mode.value == "auto"


def test_the_manual_migration_queue_is_bounded(app):
    for _ in range(rest.MAX_QUEUED_ACTIONS):
        assert send(app, "POST", "/migrations", b'{"start": ["nf3"]}')[0] == 202
    status, answer = send(app, "POST", "/migrations", b'{"start": ["nf3"]}')
    assert status == 429 and f"{rest.MAX_QUEUED_ACTIONS} manual actions" in answer["error"]
    assert app.rig.controller.pending_manual_actions == rest.MAX_QUEUED_ACTIONS
    run_period(app.rig, {})  # a period takes one queued action: there is room again
    assert send(app, "POST", "/migrations", b'{"start": ["nf3"]}')[0] == 202
