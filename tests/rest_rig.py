"""The controller's REST API in process, on a test rig (tests.controller_rig): no server, no switch."""
from __future__ import annotations

from ryu.app.wsgi import WSGIApplication

from controller_app import rest
from tests.controller_rig import Rig, run_period


def rest_api(rig: Rig) -> WSGIApplication:
    """The API of the rig's controller after one period (so it has a state to check actions against)."""
    run_period(rig, {})
    wsgi = WSGIApplication()
    rest.register(wsgi, rig.controller)
    return wsgi
