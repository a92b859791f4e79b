"""Command-line front ends under careless use: `dm-trace` in a pipe that closes early, `dm-demo --help`."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from controller_app import demo
from tests.pcap_builder import Frame, ethernet, tcp, write_pcap

ROOT = Path(__file__).resolve().parents[1]


def test_demo_help_states_the_defaults_the_code_uses():
    parser = demo._parser()
    help_text = "".join(parser.format_help().split())  # argparse wraps lines, long paths included
    for action in parser._actions:
        if action.default in (None, argparse.SUPPRESS):
            continue
        assert "%(default)s" in (action.help or ""), f"{action.option_strings} does not show its default"
        assert f"(default{action.default})" in help_text, f"{action.option_strings}: {action.default}"


def test_trace_output_into_a_pipe_closed_early_exits_quietly(tmp_path):
    """`| true` closes the pipe before dm-trace writes (as `| head -1` does once it has its line)."""
    frames = [Frame(k * 0.01, ethernet(tcp("10.0.0.1", 1000 + k, "10.0.0.2", 80))) for k in range(20)]
    pcap = write_pcap(tmp_path / "many.pcap", frames)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = f"{sys.executable} -m trace_replay.cli info --json {pcap} | true; echo \" $PIPESTATUS\""
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=120,
                            check=False)
    # As Python's documentation on SIGPIPE recommends: no message, exit status 1 (head's status is 0).
    assert (result.stdout, result.stderr) == (" 1\n", "")
