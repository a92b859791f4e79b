"""Restore ``eventlet.wsgi.ALREADY_HANDLED`` for Ryu 4.34 on eventlet >= 0.30.3.

Ryu's ``ryu.app.wsgi`` does ``from eventlet.wsgi import ALREADY_HANDLED``; newer
eventlet removed that sentinel. Installed by ``scripts/setup.sh`` as a ``.pth``
hook, this module sets the attribute the moment ``eventlet.wsgi`` is imported,
so nothing is imported eagerly at interpreter start-up.
"""
import importlib.abc
import importlib.machinery
import sys

_TARGET = "eventlet.wsgi"


def _patch(module):
    if not hasattr(module, "ALREADY_HANDLED"):
        module.ALREADY_HANDLED = object()


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, wrapped):
        self._wrapped = wrapped

    def create_module(self, spec):
        return self._wrapped.create_module(spec)

    def exec_module(self, module):
        self._wrapped.exec_module(module)
        _patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


def install():
    if _TARGET in sys.modules:
        _patch(sys.modules[_TARGET])
    elif not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
