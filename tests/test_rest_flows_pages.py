"""GET /flows a page at a time (controller_app.rest, issue 20): at most `limit` flows in id order after the
id `after`, the next page named by `Link`, every flow once when a client follows the links, a flow gone
between two pages shifting no other, and a 400 naming the parameter for a bad `limit`. In-process, over
the switch-less rig."""
from __future__ import annotations

import json
import re

import pytest
import webob

from controller_app import rest, views
from controller_app.steering import flow_key
from tests.controller_rig import land, make_rig, tuple_n
from tests.rest_rig import rest_api
from twin.flow import FiveTuple

FLOWS = 25


@pytest.fixture
def api(tmp_path):
    rig = make_rig(tmp_path)
    for n in range(FLOWS):
        land(rig, tuple_n(n), ("nf1", "nf2")[n % 2])
    return rig, rest_api(rig)


def get(wsgi, path: str) -> webob.Response:
    return webob.Request.blank(path if path.startswith(rest.PREFIX) else rest.PREFIX + path).get_response(wsgi)


def next_page(response: webob.Response) -> str | None:
    link = response.headers.get("Link")
    return None if link is None else re.fullmatch(r'<(.+)>; rel="next"', link).group(1)


def follow(wsgi, path: str) -> tuple[list[dict], list[int]]:
    """Every flow the pages from `path` hold, following `Link`; and the size of each page."""
    flows, sizes = [], []
    while path is not None:
        response = get(wsgi, path)
        assert response.status_int == 200 and response.headers["X-Total-Count"] == str(FLOWS)
        page = json.loads(response.body)
        flows += page
        sizes.append(len(page))
        path = next_page(response)
    return flows, sizes


def test_the_pages_hold_every_flow_once_in_id_order(api):
    rig, wsgi = api
    flows, sizes = follow(wsgi, "/flows?limit=10")
    assert sizes == [10, 10, 5]
    ids = [f["id"] for f in flows]
    assert ids == sorted(ids) and set(ids) == {f.key for f in rig.controller.flows}
    assert flows == views.flows_view(rig.controller)


def test_without_a_limit_one_page_holds_up_to_the_most(api):
    rig, wsgi = api
    response = get(wsgi, "/flows")
    assert json.loads(response.body) == views.flows_view(rig.controller) and next_page(response) is None
    assert len(json.loads(get(wsgi, f"/flows?limit={rest.MAX_FLOWS_PAGE}").body)) == FLOWS


def test_a_flow_gone_between_two_pages_shifts_no_other(api):
    rig, wsgi = api
    first = get(wsgi, "/flows?limit=10")
    page = json.loads(first.body)
    gone = next(t for t in map(tuple_n, range(FLOWS)) if flow_key(t) == page[3]["id"])
    reverse = FiveTuple(gone.dst_ip, gone.src_ip, gone.dst_port, gone.src_port, gone.proto)
    for direction in (gone, reverse):  # both directions' rules idle out: the flow is forgotten
        rig.controller.on_rule_expired(direction)
    assert rig.controller.flows.get(page[3]["id"]) is None
    second = json.loads(get(wsgi, next_page(first)).body)
    later = sorted(f.key for f in rig.controller.flows if f.key > page[-1]["id"])
    assert [f["id"] for f in second] == later[:10]


@pytest.mark.parametrize("query", ["limit=0", f"limit={rest.MAX_FLOWS_PAGE + 1}", "limit=x", "limit=-3",
                                   "limit=", "limit=1.5"])
def test_a_bad_limit_is_a_400_naming_it(api, query):
    _, wsgi = api
    response = get(wsgi, f"/flows?{query}")
    answer = json.loads(response.body)
    assert response.status_int == 400 and answer["field"] == "limit" and "limit" in answer["error"]


def test_an_after_past_every_id_is_an_empty_last_page(api):
    _, wsgi = api
    response = get(wsgi, "/flows?after=~")
    assert response.status_int == 200 and json.loads(response.body) == [] and next_page(response) is None


@pytest.mark.parametrize("path", ["/flows?after=%FF", "/decisions?limit=%FF%FE"])
def test_a_query_string_that_is_not_utf8_is_a_400(api, path):
    _, wsgi = api
    response = get(wsgi, path)
    assert response.status_int == 400 and "UTF-8" in json.loads(response.body)["error"]
