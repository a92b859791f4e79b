"""Issue 20, item 2: a checkpoint that loads must work. Out-of-range or unknown config values and non-finite
weights raise `CheckpointError` at load; `dm-train --resume` with a bad optimizer state or training record,
and a garbage teacher cache, end with one line and status 2, before any work."""
from __future__ import annotations

import math
import os
from unittest import mock

import pytest
import torch

from gnn_policy import checkpoint, train
from gnn_policy.bench import cli as bench
from gnn_policy.checkpoint import CheckpointError
from gnn_policy.gn import GNPolicyNet, NetConfig
from gnn_policy.graph import NODE_FEATURES

SAMPLE = "trace_replay/data/lbnl_sample.pcap.gz"


def never(*_args, **_kwargs):
    raise AssertionError("the work started on input that should have been refused")


def stored_checkpoint(tmp_path, change=None, training: dict | None = None):
    """A small valid checkpoint, its stored dict passed through `change` before it is written back."""
    path = tmp_path / "dm.pt"
    checkpoint.save(path, GNPolicyNet(NetConfig(hidden=8, steps=1)), training)
    if change is not None:
        stored = torch.load(path, weights_only=True)
        change(stored)
        torch.save(stored, path)
    return path


def set_config(**values):
    return lambda stored: stored["config"].update(values)


def poison_weights(stored):
    name = next(iter(stored["state_dict"]))
    stored["state_dict"][name] = torch.full_like(stored["state_dict"][name], math.nan)


@pytest.mark.parametrize("change, fragment", [
    (set_config(steps=10**9), "steps"),
    (set_config(steps=0), "steps"),
    (set_config(hidden=-3), "hidden"),
    (set_config(hidden=0), "hidden"),
    (set_config(hidden=100_000), "hidden"),
    (set_config(hidden=8.5), "hidden"),
    (set_config(hidden=True), "hidden"),
    (set_config(levels=[]), "levels"),
    (set_config(levels=[0.0, 0.5, 0.2]), "levels"),
    (set_config(levels=[0.1, 0.5]), "levels"),
    (set_config(levels=[0.0, 2.0]), "levels"),
    (set_config(levels=[0.0, math.nan]), "levels"),
    (set_config(levels="abc"), "levels"),
    (set_config(stay_bias=math.inf), "stay_bias"),
    (set_config(node_features=[*NODE_FEATURES[:-1], "bogus"]), "node feature 'bogus'"),
    (set_config(node_features=list(reversed(NODE_FEATURES))), "node_features"),
    (set_config(edge_features=["hops"]), "edge feature 'hops'"),
    (set_config(global_features=["cluster_utilisation", "load_variance", "th_high", 5]), "global"),
    (poison_weights, "not finite"),
])
def test_a_checkpoint_that_cannot_work_is_refused_at_load(tmp_path, change, fragment):
    path = stored_checkpoint(tmp_path, change)
    with pytest.raises(CheckpointError, match=fragment):
        checkpoint.load(path)


@pytest.mark.parametrize("change", [lambda s: s.update(config="hidden=8"),
                                    lambda s: s.update(state_dict=[1, 2]),
                                    lambda s: s.update(training=[1]), lambda s: s.pop("config")])
def test_a_checkpoint_of_the_wrong_shape_is_a_checkpoint_error(tmp_path, change):
    with pytest.raises(CheckpointError):
        checkpoint.load(stored_checkpoint(tmp_path, change))


def test_dm_bench_names_the_bad_checkpoint_before_the_run(capsys, tmp_path):
    path = stored_checkpoint(tmp_path, poison_weights)
    with mock.patch.dict(os.environ), mock.patch.object(bench, "_read_trace", never):
        status = bench.main(["--policies", "deepmigration", "--checkpoint", str(path), "--experiment", "lb",
                             "--quick"])
    err = capsys.readouterr().err
    assert status == 2 and "not finite" in err and str(path) in err and "Traceback" not in err


# --- dm-train --resume and the teacher cache ----------------------------------------------------------

def train_argv(tmp_path, *extra: str) -> list[str]:
    return ["--trace", SAMPLE, "--out", str(tmp_path / "out.pt"), "--logdir", str(tmp_path / "runs"),
            "--teacher-cache", str(tmp_path / "teacher.pt"), "--pool-size", "3", "--iterations", "5", *extra]


def refused_by_dm_train(capsys, argv: list[str]) -> str:
    with mock.patch.object(train, "training_pool", never):
        status = train.main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def stepped_optimizer_state() -> dict:
    net = GNPolicyNet(NetConfig(hidden=8, steps=1))
    optimizer = torch.optim.Adam(net.parameters())
    sum(p.sum() for p in net.parameters()).backward()
    optimizer.step()
    return optimizer.state_dict()


def break_exp_avg(state: dict) -> dict:
    state["state"][0]["exp_avg"] = torch.zeros(3)
    return state


def nan_step(state: dict) -> dict:
    state["state"][0]["exp_avg_sq"] = torch.full_like(state["state"][0]["exp_avg_sq"], math.nan)
    return state


@pytest.mark.parametrize("training, fragment", [
    ({"iteration": 0, "optimizer": {"state": {}, "param_groups": []}}, "optimizer"),
    ({"iteration": 0, "optimizer": "adam"}, "optimizer"),
    ({"iteration": 0, "optimizer": break_exp_avg(stepped_optimizer_state())}, "optimizer"),
    ({"iteration": 0, "optimizer": nan_step(stepped_optimizer_state())}, "optimizer"),
    ({"iteration": "abc"}, "iteration"),
    ({"iteration": -7}, "iteration"),
    ({"iteration": 0, "history": "lots"}, "history"),
    ({"iteration": 0, "history": [{"reward": 1.0}]}, "history"),
    ({"iteration": 0, "imitation": [3]}, "imitation"),
    ({"iteration": 9}, "nothing to train"),
])
def test_resume_with_a_bad_training_record_is_one_line(capsys, tmp_path, training, fragment):
    path = stored_checkpoint(tmp_path, training=training)
    err = refused_by_dm_train(capsys, train_argv(tmp_path, "--resume", str(path)))
    assert fragment in err and str(path) in err


def test_resume_from_a_checkpoint_that_cannot_work_is_one_line(capsys, tmp_path):
    path = stored_checkpoint(tmp_path, set_config(steps=10**9))
    assert "steps" in refused_by_dm_train(capsys, train_argv(tmp_path, "--resume", str(path)))


@pytest.mark.parametrize("content", [b"garbage, not a torch file", [1, 2, 3], {"key": 5},
                                     {"key": "k", "actions": [[1, 2]]},
                                     {"key": "k", "actions": [[torch.zeros(2)]]}])
def test_a_garbage_teacher_cache_is_one_line_and_left_alone(capsys, tmp_path, content):
    cache = tmp_path / "teacher.pt"
    if isinstance(content, bytes):
        cache.write_bytes(content)
    else:
        torch.save(content, cache)
    before = cache.read_bytes()
    err = refused_by_dm_train(capsys, train_argv(tmp_path, "--imitation-epochs", "2"))
    assert "teacher cache" in err and str(cache) in err
    assert cache.read_bytes() == before
