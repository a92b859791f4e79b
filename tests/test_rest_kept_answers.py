"""The reads' kept answers (controller_app.rest.KeptAnswers): built once per controller version, and
never stale: every event, write and period that changes what a view shows gives a fresh answer, equal to
the view built afresh. Served in-process over the switch-less rig."""
from __future__ import annotations

import json

import pytest
import webob

from controller_app import rest, views
from tests.controller_rig import land, make_rig, overload_nf1, run_period, tuple_n
from tests.rest_rig import rest_api

TOKEN = "kept-answers-test-token"
PREFIX = "/deepmigration/v1"
READS = {"/state": lambda c: views.state_view(c), "/instances": lambda c: views.instances_view(c),
         "/flows": lambda c: views.flows_view(c), "/decisions?limit=5": lambda c: views.decisions_view(c, 5),
         "/decisions": lambda c: views.decisions_view(c, rest.DEFAULT_DECISIONS),
         "/config": lambda c: c.config.public()}


@pytest.fixture
def api(tmp_path):
    rig = make_rig(tmp_path, token=TOKEN)
    return rig, rest_api(rig)


def get(wsgi, path: str) -> bytes:
    response = webob.Request.blank(PREFIX + path).get_response(wsgi)
    assert response.status_int == 200 and response.content_type == "application/json"
    return response.body


def patch_config(wsgi, body: dict) -> None:
    request = webob.Request.blank(PREFIX + "/config", method="PATCH", body=json.dumps(body).encode())
    request.headers["Authorization"] = f"Bearer {TOKEN}"
    assert request.get_response(wsgi).status_int == 200


def assert_fresh(rig, wsgi) -> dict[str, bytes]:
    """Every read answers what its view shows now, encoded as before the answers were kept."""
    answers = {path: get(wsgi, path) for path in READS}
    for path, view in READS.items():
        assert answers[path] == json.dumps(view(rig.controller)).encode(), path
    return answers


def test_an_unchanged_controller_answers_from_the_kept_bytes(api, monkeypatch):
    rig, wsgi = api
    first = assert_fresh(rig, wsgi)
    built = []
    monkeypatch.setattr(rest, "state_view", lambda core: built.append(core) or views.state_view(core))
    assert get(wsgi, "/state") == first["/state"] and not built
    patch_config(wsgi, {"mode": rig.controller.config.mode.value})  # a write that changes nothing
    assert get(wsgi, "/state") == first["/state"] and not built


def test_the_answers_follow_flows_periods_decisions_and_writes(api):
    rig, wsgi = api
    before = assert_fresh(rig, wsgi)
    land(rig, tuple_n(99), "nf2")  # an event between periods
    landed = assert_fresh(rig, wsgi)
    assert landed["/flows"] != before["/flows"] and landed["/state"] != before["/state"]
    flows = overload_nf1(rig)
    record = run_period(rig, {t: 60 for t in flows})  # nf1 overloaded: the policy moves flows away
    assert record is not None
    after = assert_fresh(rig, wsgi)
    assert json.loads(after["/decisions"])[0]["id"] == record.id
    assert after["/flows"] != landed["/flows"]
    patch_config(wsgi, {"mode": "manual"})
    configured = assert_fresh(rig, wsgi)
    assert json.loads(configured["/state"])["mode"] == json.loads(configured["/config"])["mode"] == "manual"


def test_a_controller_that_replaces_another_never_repeats_its_versions(tmp_path):
    first = make_rig(tmp_path / "a").controller
    second = make_rig(tmp_path / "b").controller
    assert second.version > first.version


def test_metrics_are_kept_per_version_and_follow_the_decisions(api, monkeypatch):
    rig, wsgi = api
    first = webob.Request.blank("/metrics").get_response(wsgi)
    assert first.status_int == 200 and first.body == rig.controller.metrics.text()
    built = []
    text = rig.controller.metrics.text
    monkeypatch.setattr(rig.controller.metrics, "text", lambda: built.append(1) or text())
    assert webob.Request.blank(PREFIX + "/metrics").get_response(wsgi).body == first.body and not built
    flows = overload_nf1(rig)
    assert run_period(rig, {t: 60 for t in flows}) is not None  # a decision: its counters count it
    after = webob.Request.blank("/metrics").get_response(wsgi).body
    assert built and after == text() and after != first.body
