"""Hypothesis against the REST handlers (in-process, over the switch-less rig): generated bodies,
methods, paths and tokens never get a 5xx, and every answer is one the spec (docs/openapi.yaml)
lists for its operation, errors as JSON `Error` objects. schemathesis covers the spec's schemas
against the live server (tests/test_rest_api.py)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import webob
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller_app import rest
from tests.controller_rig import make_rig
from tests.rest_rig import rest_api

SPEC = yaml.safe_load((Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml").read_text())
TOKEN = "fuzzing-token-0123456789"
PATHS = sorted(SPEC["paths"])
METHODS = ("GET", "PUT", "PATCH", "POST", "DELETE", "OPTIONS")
WRITES = [(path, method.upper()) for path, operations in SPEC["paths"].items() for method, operation in
          operations.items() if "requestBody" in operation]

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
ids = st.sampled_from(["nf1", "nf2", "nf3", "nf9", "", "10.0.0.1:1-10.0.1.1:80/6"]) | st.text(max_size=6)
# Bodies near the real ones reach the validation behind the first type check.
config_changes = st.fixed_dictionaries({}, optional={
    "thresholds": st.fixed_dictionaries({}, optional={k: json_values | st.floats(-1, 2) for k in ("high", "low", "var")})
    | json_values,
    "period_s": st.floats(allow_nan=True) | json_values,
    "policy": st.sampled_from(["ofm", "random", "magic"]) | json_values,  # not the slow-loading GN policy
    "mode": st.sampled_from(["auto", "dry-run", "manual", "turbo"]) | json_values,
    "stabilizer": st.dictionaries(st.sampled_from(["enabled", "estimator", "tolerance", "max_migrations", "v"]),
                                  json_values, max_size=3) | json_values,
    "token": st.text(max_size=20), "seed": json_values})
actions = st.fixed_dictionaries({}, optional={
    "migrations": st.lists(st.fixed_dictionaries({"flow": ids, "src": ids, "dst": ids}) | json_values, max_size=3)
    | json_values,
    "start": st.lists(ids, max_size=3) | json_values, "stop": st.lists(ids, max_size=3) | json_values,
    "other": json_values})
bodies = (st.builds(lambda v: json.dumps(v).encode(), json_values | config_changes | actions)
          | st.binary(max_size=64) | st.none()
          | st.builds(lambda depth, pair: pair[0] * depth + pair[1] * depth,
                      st.sampled_from([40, 1_000, 100_000]) | st.integers(1, 5_000),
                      st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")])))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return rest_api(make_rig(tmp_path_factory.mktemp("fuzz"), token=TOKEN))


def _documented(path: str, method: str) -> set[int]:
    operation = SPEC["paths"][path].get(method.lower())
    return {405} if operation is None else {int(code) for code in operation["responses"]}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operation=st.sampled_from(WRITES) | st.tuples(st.sampled_from(PATHS), st.sampled_from(METHODS)),
       body=bodies, token=st.sampled_from([TOKEN, TOKEN, None, "wrong"]), chunked=st.booleans(),
       query=st.sampled_from(["", "?limit=5", "?limit=0", "?limit=x", "?limit=99999999999999999999", "?limit=1001",
                              "?after=", "?after=%00%FF", "?limit=1&after=10.0.0.1:1-10.0.1.1:80/6"]))
def test_generated_requests_get_a_documented_answer_and_never_a_5xx(app, operation, body, token, chunked, query):
    path, method = operation
    request = webob.Request.blank(rest.PREFIX + path + query, method=method)
    if token is not None:
        request.headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        request.environ["wsgi.input"] = io.BytesIO(body)
        if chunked:
            request.headers["Transfer-Encoding"] = "chunked"
        else:
            request.environ["CONTENT_LENGTH"] = str(len(body))
    response = request.get_response(app)
    status = response.status_int
    assert status < 500, response.body
    assert status in _documented(path, method), (status, response.body)
    if status >= 400:
        answer = json.loads(response.body)
        assert isinstance(answer["error"], str) and answer["status"] == status
        assert status != 405 or response.headers["Allow"]
