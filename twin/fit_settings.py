"""`dm-twin fit --set NAME=VALUE`: a learned twin's hyper-parameters (a dataclass) with numeric settings
applied, one rule for every kind."""
from __future__ import annotations

import dataclasses
from typing import TypeVar

Config = TypeVar("Config")


def configured(defaults: Config, settings: list[str], error: type[Exception]) -> Config:
    """`defaults` with each NAME=VALUE setting applied; `error` (the kind's fit error) names a setting that is
    not a numeric hyper-parameter, or a value of the wrong type or out of the dataclass's range."""
    changes = {}
    numbers = [f.name for f in dataclasses.fields(defaults) if _numeric(getattr(defaults, f.name))]
    for setting in settings:
        name, _, value = setting.partition("=")
        if name not in numbers:
            raise error(f"--set {setting!r}: {name!r} is not a numeric hyper-parameter ({', '.join(numbers)})")
        kind = type(getattr(defaults, name))
        try:
            changes[name] = kind(value)
        except ValueError:
            raise error(f"--set {setting!r}: {name} takes a number of type {kind.__name__}, got {value!r}") from None
    try:
        return dataclasses.replace(defaults, **changes)
    except ValueError as problem:
        raise error(f"--set: {problem}") from None


def _numeric(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
