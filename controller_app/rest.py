"""The REST API under /deepmigration/v1/ on Ryu's WSGI server (documented in docs/openapi.yaml).

Reads are open; writes (PUT or PATCH /config, POST /migrations) need `Authorization: Bearer <token>`
with the token of the controller config. Every answer, errors included, is JSON: a bad request
gets a 4xx naming the problem and the controller carries on. The one exception is the Prometheus
exposition (controller_app.metrics), in the text format at /metrics (Prometheus's default scrape path)
and at /deepmigration/v1/metrics (where the API's spec documents it).
"""
from __future__ import annotations

import functools
import hmac
import json
import logging
import math
from urllib.parse import urlencode

from ryu.app.wsgi import ControllerBase, Response, WSGIApplication, route
from ryu.lib import hub

from controller_app.config import ConfigError
from controller_app.core import DECISIONS_KEPT, Controller
from controller_app.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from controller_app.views import (
    ActionRejected,
    action_view,
    decisions_view,
    flows_view,
    instances_view,
    state_view,
)

LOG = logging.getLogger(__name__)
LOCALHOST = "127.0.0.1"
PREFIX = "/deepmigration/v1"
MAX_BODY_BYTES = 1 << 20
"""The largest request body, counted on the bytes read (a chunked body has no Content-Length to trust)."""
DRAINED_BODY_BYTES = 4 * MAX_BODY_BYTES
"""A refused body up to this size is read (and dropped) before the 413; a larger one is not read at all."""
MAX_JSON_DEPTH = 32
"""The deepest nesting of arrays and objects a body may have; the API's own bodies nest 3 deep."""
MAX_QUEUED_ACTIONS = 16
"""POST /migrations queues at most this many actions; each period carries out one (docs/controller.md)."""
_READ_BYTES = 1 << 16
DEFAULT_DECISIONS = 20
CORE = "core"
ANSWERS = "answers"
MAX_KEPT_ANSWERS = 16
"""Encoded answers kept per controller version: the views, and a few `limit`s of /decisions and pages of /flows."""
MAX_FLOWS_PAGE = 1000
"""The most flows one GET /flows answers (its default `limit`); the next page is named by its `Link` header."""

METRICS = "/metrics"
ALLOWED = {"/state": "GET", "/instances": "GET", "/flows": "GET", "/decisions": "GET",
           "/config": "GET, PUT, PATCH", "/migrations": "POST", METRICS: "GET"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.field, self.headers = status, field, headers or {}


def json_response(body, status: int = 200, headers: dict | None = None) -> Response:
    """A webob Response with `body` (any JSON-serialisable value) as UTF-8 JSON, plus extra `headers`."""
    response = encoded_response(json.dumps(body).encode(), status)
    response.headers.update(headers or {})
    return response


def encoded_response(body: bytes, status: int = 200) -> Response:
    """A webob Response with `body`, JSON already encoded as UTF-8."""
    return Response(status=status, content_type="application/json", charset="utf-8", body=body)


class KeptAnswers:
    """The encoded answers of the reads, kept while the controller's `version` is unchanged: under load
    (docs/testbed.md, "REST load") a read costs a lookup, not a view built and encoded afresh, so that the
    period that shares the event loop keeps its time. The views do not yield, so an answer is built from
    one version."""

    def __init__(self):
        self._version: int | None = None
        self._answers: dict[tuple, object] = {}

    def answer(self, core: Controller, key: tuple, build):
        """`build()` (the encoded answer: bytes, or bytes and headers) for `core` under `key`, built once per
        version of the controller."""
        version = core.version
        if version != self._version:
            self._version, self._answers = version, {}
        answer = self._answers.get(key)
        if answer is None:
            answer = build()
            if len(self._answers) < MAX_KEPT_ANSWERS:
                self._answers[key] = answer
        return answer


def _answers_json(handler):
    """Turn every failure of a handler into a JSON error answer; nothing escapes to the server."""
    @functools.wraps(handler)
    def wrapped(self, req, **kwargs):
        try:
            return handler(self, req, **kwargs)
        except ApiError as error:
            return _error(error.status, str(error), error.field, error.headers)
        except ConfigError as error:
            return _error(400, str(error), error.field)
        except ActionRejected as error:
            return _error(error.status, str(error), offender=error.offender)
        except Exception:
            LOG.exception("REST %s %s failed", req.method, req.path)
            return _error(500, "internal error; see the controller log")
    return wrapped


_TURN = hub.Semaphore(1)
"""Reads are answered one at a time, each after a yield to the event loop. The period loop shares that loop
(eventlet: one OS thread) and yields at every NF call and switch request of a period; without turns, every
client connection with a request ready ran its read between two such steps, so a period that makes a few
dozen NF calls was late by as many rounds of requests (measured: docs/testbed.md, "REST load"). A woken
waiter runs at the next turn of the event loop (eventlet's semaphore is fair), so at most one read runs
between two steps of a period. Writes read their body from the client first and are not taken in turn: a
slow client must not hold up the reads."""


def _in_turn(handler):
    """Run a read handler in its turn (`_TURN`)."""
    @functools.wraps(handler)
    def wrapped(self, req, **kwargs):
        hub.sleep(0)
        with _TURN:
            return handler(self, req, **kwargs)
    return wrapped


def _query(req, name: str) -> str | None:
    """The query parameter `name` (None when absent); a 400 when the query string is not UTF-8."""
    try:
        return req.GET.get(name)
    except UnicodeDecodeError:
        raise ApiError(400, "the query string is not valid UTF-8 (percent-encoded)", name) from None


def _query_int(req, name: str, default: int, most: int) -> int:
    """The integer query parameter `name`, 1..`most` (400 naming it otherwise); `default` when absent."""
    raw = _query(req, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, not {raw!r}", name) from None
    if not 1 <= value <= most:
        raise ApiError(400, f"{name} must be between 1 and {most}", name)
    return value


def _flows_page(core: Controller, limit: int, after: str | None) -> tuple[bytes, dict]:
    """The encoded page of GET /flows and its headers (`Link` to the next page while there is one)."""
    page = flows_view(core, limit + 1, after)
    headers = {"X-Total-Count": str(len(core.flows))}
    if len(page) > limit:
        page = page[:limit]
        query = urlencode({"limit": limit, "after": page[-1]["id"]})
        headers["Link"] = f'<{PREFIX}/flows?{query}>; rel="next"'
    return json.dumps(page).encode(), headers


def _error(status: int, message: str, field: str | None = None, headers: dict | None = None,
           offender: str | None = None) -> Response:
    body = {"error": message, "status": status}
    if field is not None:
        body["field"] = field
    if offender is not None:
        body["offender"] = offender
    return json_response(body, status, headers)


class DeepMigrationRest(ControllerBase):
    def __init__(self, req, link, data, **config):
        super().__init__(req, link, data, **config)
        self.core: Controller = data[CORE]
        self.answers: KeptAnswers = data[ANSWERS]

    def _kept(self, key: tuple, view) -> Response:
        return encoded_response(self.answers.answer(self.core, key, lambda: json.dumps(view()).encode()))

    @route("dm_state", PREFIX + "/state", methods=["GET"])
    @_answers_json
    @_in_turn
    def get_state(self, req, **_):
        return self._kept(("state",), lambda: state_view(self.core))

    @route("dm_instances", PREFIX + "/instances", methods=["GET"])
    @_answers_json
    @_in_turn
    def get_instances(self, req, **_):
        return self._kept(("instances",), lambda: instances_view(self.core))

    @route("dm_flows", PREFIX + "/flows", methods=["GET"])
    @_answers_json
    @_in_turn
    def get_flows(self, req, **_):
        """A page of the steered flows in id order: at most `limit` (1..MAX_FLOWS_PAGE, default the most),
        those whose id sorts after `after` (the last id of the previous page; none: from the first). The
        `Link` header names the next page while there is one; `X-Total-Count` counts every steered flow."""
        limit = _query_int(req, "limit", MAX_FLOWS_PAGE, MAX_FLOWS_PAGE)
        after = _query(req, "after")
        body, headers = self.answers.answer(self.core, ("flows", limit, after),
                                            lambda: _flows_page(self.core, limit, after))
        response = encoded_response(body)
        response.headers.update(headers)
        return response

    @route("dm_decisions", PREFIX + "/decisions", methods=["GET"])
    @_answers_json
    @_in_turn
    def get_decisions(self, req, **_):
        limit = _query_int(req, "limit", DEFAULT_DECISIONS, DECISIONS_KEPT)
        return self._kept(("decisions", limit), lambda: decisions_view(self.core, limit))

    @route("dm_config", PREFIX + "/config", methods=["GET"])
    @_answers_json
    @_in_turn
    def get_config(self, req, **_):
        return self._kept(("config",), lambda: self.core.config.public())

    @route("dm_config", PREFIX + "/config", methods=["PUT", "PATCH"])
    @_answers_json
    def put_config(self, req, **_):
        """PUT and PATCH alike change only the fields the body names (thresholds and stabilizer partially)."""
        self._authorise(req)
        return json_response(self.core.reconfigure(_json_body(req)).public())

    @route("dm_migrations", PREFIX + "/migrations", methods=["POST"])
    @_answers_json
    def post_migrations(self, req, **_):
        self._authorise(req)
        if self.core.pending_manual_actions >= MAX_QUEUED_ACTIONS:
            raise ApiError(429, f"{MAX_QUEUED_ACTIONS} manual actions are already queued (one runs per period); "
                                "try again after the next period",
                           headers={"Retry-After": str(math.ceil(self.core.config.period_s))})
        action = self.core.submit(_json_body(req))
        return json_response({"queued": action_view(action)}, 202)

    @route("dm_metrics", METRICS, methods=["GET"])
    @_answers_json
    @_in_turn
    def get_metrics(self, req, **_):
        response = Response(status=200, body=self.answers.answer(self.core, ("metrics",), self.core.metrics.text))
        response.headers["Content-Type"] = METRICS_CONTENT_TYPE
        return response

    @route("dm_metrics_api", PREFIX + METRICS, methods=["GET"])
    def get_metrics_in_api(self, req, **_):
        return self.get_metrics(req)

    @_answers_json
    def method_not_allowed(self, req, **_):
        allowed = ALLOWED[req.path_info.removeprefix(PREFIX)]
        raise ApiError(405, f"{req.method} is not allowed here; use {allowed}", headers={"Allow": allowed})

    def _authorise(self, req) -> None:
        scheme, _, token = req.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "writes need an 'Authorization: Bearer <token>' header",
                           headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(token.encode(), self.core.config.token.encode()):
            raise ApiError(403, "wrong token")


def _json_body(req):
    """The request body as JSON: 413 past MAX_BODY_BYTES, 400 if it is no JSON or nests too deeply."""
    body = _read_body(req)
    try:
        value = json.loads(body)
    except RecursionError:
        raise ApiError(400, f"the body is nested deeper than {MAX_JSON_DEPTH} arrays or objects") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the body is not valid JSON: {error}") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ApiError(400, f"the body is nested deeper than {MAX_JSON_DEPTH} arrays or objects")
    return value


def _read_body(req) -> bytes:
    """The body from the input stream itself, counted as it is read: the Content-Length bytes, or a
    chunked body (eventlet decodes the chunks) to its end; never more than MAX_BODY_BYTES."""
    declared = req.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        if declared <= DRAINED_BODY_BYTES:
            _discard(req.environ["wsgi.input"], declared)
        raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    chunked = req.headers.get("Transfer-Encoding", "").lower() == "chunked"
    if declared is None and not chunked:
        return b""  # no body: reading would wait for the client to close the connection
    stream, pieces, size = req.environ["wsgi.input"], [], 0
    limit = MAX_BODY_BYTES + 1 if declared is None else declared
    while size < limit and (piece := stream.read(min(_READ_BYTES, limit - size))):
        pieces.append(piece)
        size += len(piece)
    if size > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    return b"".join(pieces)


def _discard(stream, size: int) -> None:
    """Read and drop a refused body, so that a client that sends it all before reading gets the 413
    rather than a broken pipe when the connection closes under it."""
    while size > 0 and (piece := stream.read(min(_READ_BYTES, size))):
        size -= len(piece)


def _depth(value) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (iteratively: no recursion to exhaust)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def register(wsgi: WSGIApplication, core: Controller) -> None:
    """Serve the API for `core`; other methods on its paths get 405 (routes match in connect order)."""
    wsgi.register(DeepMigrationRest, {CORE: core, ANSWERS: KeptAnswers()})
    for path in ALLOWED:
        wsgi.mapper.connect(f"dm_not_allowed{path}", PREFIX + path, controller=DeepMigrationRest,
                            action="method_not_allowed")
    wsgi.mapper.connect("dm_not_allowed_root_metrics", METRICS, controller=DeepMigrationRest,
                        action="method_not_allowed")
