"""`dm-twin fit --set NAME=VALUE`: a learned twin's hyper-parameters (a dataclass) with numeric settings
applied, one rule for every kind; `OUTER.NAME` reaches a numeric field of a nested dataclass (the residual
twin's network shape, `--set net.history=5`)."""
from __future__ import annotations

import dataclasses
from typing import TypeVar

Config = TypeVar("Config")


def configured(defaults: Config, settings: list[str], error: type[Exception]) -> Config:
    """`defaults` with each NAME=VALUE setting applied; `error` (the kind's fit error) names a setting that is
    not a numeric hyper-parameter, or a value of the wrong type or out of the dataclass's range."""
    changes: dict[str, dict] = {}
    numbers = _numeric_names(defaults)
    for setting in settings:
        name, _, value = setting.partition("=")
        if name not in numbers:
            raise error(f"--set {setting!r}: {name!r} is not a numeric hyper-parameter ({', '.join(numbers)})")
        outer, _, inner = name.rpartition(".")
        kind = type(getattr(getattr(defaults, outer) if outer else defaults, inner))
        try:
            changes.setdefault(outer, {})[inner] = kind(value)
        except ValueError:
            raise error(f"--set {setting!r}: {name} takes a number of type {kind.__name__}, got {value!r}") from None
    try:
        nested = {outer: dataclasses.replace(getattr(defaults, outer), **fields)
                  for outer, fields in changes.items() if outer}
        return dataclasses.replace(defaults, **changes.get("", {}), **nested)
    except ValueError as problem:
        raise error(f"--set: {problem}") from None


def _numeric_names(defaults) -> list[str]:
    """The numeric fields of `defaults`, then those of its dataclass fields as OUTER.NAME."""
    names = []
    for f in dataclasses.fields(defaults):
        value = getattr(defaults, f.name)
        if _numeric(value):
            names.append(f.name)
        elif dataclasses.is_dataclass(value):
            names += [f"{f.name}.{g.name}" for g in dataclasses.fields(value) if _numeric(getattr(value, g.name))]
    return names


def _numeric(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
