"""argparse types shared by the command-line tools, so that every tool rejects a bad number or output path the
same way: at parse time, before any work, with one line naming the option (status 2)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from trace_replay.files import OutputError, check_output

MAX_SEED = 2**63 - 1
"""Seeds are 0..MAX_SEED: numpy's generators refuse negative seeds and torch's take 64 bits."""


def positive_int(text: str) -> int:
    return _integer(text, 1)


def non_negative_int(text: str) -> int:
    return _integer(text, 0)


def rng_seed(text: str) -> int:
    value = _integer(text, 0)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is at most 2**63 - 1: {text!r}")
    return value


def _integer(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0: {text!r}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number: {text!r}")
    return value


def output_file(text: str) -> Path:
    """A file to write (or replace) in an existing directory; see `trace_replay.files.check_output`."""
    return _output(text, make_parents=False)


def output_file_new_folders(text: str) -> Path:
    """A file to write whose missing parent folders the command creates."""
    return _output(text, make_parents=True)


def _output(text: str, make_parents: bool) -> Path:
    try:
        return check_output(text, make_parents=make_parents)
    except OutputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
