"""The generative and predictive twin (issue 18, section 3; twin.generative): its networks beat a mean
predictor on held-out simulated recordings, the κ-mixed batch draws the right shares, checkpoints round-trip
and bad ones are refused by name, the twin buffer and the `generative` twin of the fidelity benchmark work."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import simulated_dataset
from twin.cli import main
from twin.fidelity.evaluate import collect, load_dataset, records
from twin.generative import checkpoint
from twin.generative.buffers import PhysicalBuffers, TwinBuffer, split_counts
from twin.generative.features import ACTION, STATE, Transitions, failed_periods, transitions
from twin.generative.fit import against_mean, fit
from twin.generative.models import GenerativeConfig, GenerativeModel
from twin.generative.rollout import GenerativeTwin

CONFIG = GenerativeConfig(steps=1500, validate_every=100)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("generative")
    simulated_dataset(root, steps=150)
    episodes = load_dataset(root, default_split="train")
    model, record = fit(episodes, CONFIG, progress=False)
    return {"root": root, "episodes": episodes, "model": model, "record": record}


def test_the_fit_keeps_the_weights_chosen_on_validation(fitted):
    record = fitted["record"]
    assert record["chosen_on"] == "validation" and record["transitions"]["validation"] > 100
    assert record["successful"] + record["failed"] == record["transitions"]["train"]
    assert 0 < record["best_step"]["vae"] <= CONFIG.steps and 0 < record["best_step"]["lstm"] <= CONFIG.steps


@pytest.mark.parametrize("task", ["vae_reconstruction", "lstm_next_state", "lstm_reward"])
def test_the_networks_beat_the_mean_predictor_on_held_out_periods(fitted, task):
    history = fitted["model"].config.history
    test = transitions(fitted["episodes"], "test", history)
    assert len(test) > 100
    errors = against_mean(fitted["model"], test, transitions(fitted["episodes"], "train", history))[task]
    assert errors["model"] < 0.9 * errors["mean"], errors


def test_a_period_failed_when_it_dropped_packets_broke_an_sla_or_overloaded_an_instance(fitted):
    for episode in fitted["episodes"]:
        rows = slice(episode.first, episode.last - 1)
        sla = np.nan_to_num(episode.recording.column("periods", "measured_sla_violations")[rows])
        dropped = np.nansum(episode.drops[:-1], axis=1) > 0
        overloaded = (np.where(episode.active, episode.utilisation, 0.0)[1:] > 1.0).any(axis=1)
        assert failed_periods(episode).tolist() == (dropped | (sla > 0) | overloaded).tolist()
        assert dropped.any() and not (dropped | (sla > 0) | overloaded).all()


def _transitions(failed: list[bool], n: int = 2, history: int = 2) -> Transitions:
    b = len(failed)
    return Transitions(np.zeros((b, history, n, len(STATE))), np.zeros((b, history, n, len(ACTION))),
                       np.zeros((b, n, len(STATE))), np.arange(b, dtype=float), np.array(failed, dtype=bool),
                       np.ones((b, n), dtype=bool))


@settings(max_examples=60, deadline=None)
@given(successful=st.integers(0, 30), failed=st.integers(0, 30), j=st.integers(1, 64),
       kappa=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_a_physical_batch_draws_kappa_j_successful_and_the_rest_failed(successful, failed, j, kappa, seed):
    flags = [False] * successful + [True] * failed
    buffers = PhysicalBuffers(_transitions(list(np.random.default_rng(seed).permutation(flags))))
    if not flags:
        with pytest.raises(ValueError, match="empty"):
            buffers.sample(j, kappa, np.random.default_rng(seed))
        return
    batch = buffers.sample(j, kappa, np.random.default_rng(seed))
    expected = round(kappa * j) if successful and failed else (j if successful else 0)
    assert len(batch) == j
    assert (~batch.failed).sum() == expected
    assert not batch.failed[:expected].any() and batch.failed[expected:].all()


def test_the_physical_buffers_keep_the_last_transitions_up_to_their_capacity():
    buffers = PhysicalBuffers(_transitions([False, True] * 10), successful_capacity=4, failed_capacity=3)
    assert buffers.successful.rewards.tolist() == [12.0, 14.0, 16.0, 18.0]
    assert buffers.failed.rewards.tolist() == [15.0, 17.0, 19.0]


def test_kappa_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="kappa"):
        split_counts(32, 1.5, 10, 10)


def test_the_twin_buffer_holds_synthetic_transitions_for_the_learner(fitted):
    train = transitions(fitted["episodes"], "train", fitted["model"].config.history)
    buffer = TwinBuffer(capacity=300)
    buffer.fill(fitted["model"], PhysicalBuffers(train), count=500, kappa=0.3)
    assert len(buffer) == 300
    batch = buffer.sample(32)
    n = train.mask.shape[1]
    assert batch.states.shape == batch.next_states.shape == (32, n, len(STATE))
    assert batch.actions.shape == (32, n, len(ACTION)) and batch.rewards.shape == (32,)
    for tensor in (batch.states, batch.actions, batch.next_states, batch.rewards):
        assert torch.isfinite(tensor).all()
    assert set(batch.states[..., STATE.index("active")].unique().tolist()) <= {0.0, 1.0}
    assert set(batch.actions[..., ACTION.index("started")].unique().tolist()) <= {0.0, 1.0}


def test_the_networks_take_any_number_of_instances(fitted):
    model, h = fitted["model"], fitted["model"].config.history
    for n in (1, 3, 7):
        mask = torch.ones((5, n), dtype=torch.bool)
        states, actions = torch.rand(5, h, n, len(STATE)), torch.rand(5, h, n, len(ACTION))
        next_states, rewards = model.predict(states, actions, mask)
        assert next_states.shape == (5, n, len(STATE)) and rewards.shape == (5,)
        synthetic, _ = model.generate(states[:, -1], actions[:, -1], mask)
        assert synthetic.shape == (5, n, len(STATE))


def test_the_generative_twin_rolls_out_in_the_fidelity_benchmark(fitted):
    samples = collect(GenerativeTwin(fitted["model"]), fitted["episodes"], [1, 5], "test")
    rows = {(r["k"], r["metric"]): r for r in records("generative", samples)}
    for k in (1, 5):
        for metric in ("utilisation", "queue", "drops"):
            assert rows[(k, metric)]["n"] > 0 and np.isfinite(rows[(k, metric)]["mae"])


def test_a_checkpoint_round_trips(fitted, tmp_path):
    path = tmp_path / "generative.pt"
    checkpoint.save(path, fitted["model"], fitted["record"])
    model, record = checkpoint.load(path)
    assert record == fitted["record"] and model.config == fitted["model"].config
    test = transitions(fitted["episodes"], "test", model.config.history)
    args = (torch.as_tensor(test.states), torch.as_tensor(test.actions), torch.as_tensor(test.mask))
    for ours, theirs in zip(model.predict(*args), fitted["model"].predict(*args)):
        assert torch.equal(ours, theirs)


def _stored(model: GenerativeModel) -> dict:
    return {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "config": model.config.to_dict(),
            "features": {"state": list(STATE), "action": list(ACTION)}, "state_dict": model.state_dict()}


@pytest.mark.parametrize("change, named", [
    ({"version": 99}, "version 99"),
    ({"format": "deepmigration-gn"}, "not a generative-twin checkpoint"),
    ({"features": {"state": ["utilisation"], "action": []}}, "other features"),
    ({"config": {"latent": 3}}, "do not fit"),
    ({"config": {"depth": 3}}, "unusable hyper-parameters"),
])
def test_a_bad_checkpoint_is_refused_by_name(tmp_path, change, named):
    path = tmp_path / "bad.pt"
    torch.save({**_stored(GenerativeModel(GenerativeConfig())), **change}, path)
    with pytest.raises(checkpoint.CheckpointError, match=named):
        checkpoint.load(path)


def test_a_corrupt_checkpoint_is_refused_and_the_cli_says_so_in_one_line(fitted, tmp_path, capsys):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="not a readable torch checkpoint"):
        checkpoint.load(path)
    params = tmp_path / "params.json"
    assert main(["calibrate", "--data", str(fitted["root"]), "--out", str(params)]) == 0
    capsys.readouterr()
    assert main(["eval", "--data", str(fitted["root"]), "--params", str(params), "--k", "1",
                 "--model", f"generative={path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dm-twin: error:") and "not a readable torch checkpoint" in err
    assert "Traceback" not in err


def test_dm_twin_fit_writes_a_checkpoint_that_dm_twin_eval_reports(fitted, tmp_path, capsys):
    out, logdir, params = tmp_path / "generative.pt", tmp_path / "logs", tmp_path / "params.json"
    assert main(["fit", "--data", str(fitted["root"]), "--kind", "generative", "--out", str(out),
                 "--logdir", str(logdir), "--set", "steps=40", "--set", "kl_weight=0.5"]) == 0
    assert any(p.name.startswith("events.out.tfevents") for p in logdir.iterdir())
    _, record = checkpoint.load(out)
    assert record["config"]["steps"] == 40 and record["config"]["kl_weight"] == 0.5 and "validation_mse_against_mean" in record
    assert main(["calibrate", "--data", str(fitted["root"]), "--out", str(params)]) == 0
    capsys.readouterr()
    assert main(["eval", "--data", str(fitted["root"]), "--params", str(params), "--k", "1",
                 "--model", f"generative={out}"]) == 0
    table = capsys.readouterr().out
    assert "| generative |" in table.splitlines()[0] + " |"


def test_dm_twin_fit_refuses_an_unknown_kind(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--kind", "oracle", "--out", "x.pt"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("setting, named", [("depth=3", "'depth' is not a numeric hyper-parameter"),
                                            ("steps=many", "steps takes a number of type int"),
                                            ("kappa=1.5", "kappa must lie in \\[0, 1\\]"),
                                            ("steps=0", "steps must be at least 1")])
def test_dm_twin_fit_refuses_a_bad_setting_before_any_work(fitted, tmp_path, capsys, setting, named):
    out = tmp_path / "generative.pt"
    assert main(["fit", "--data", str(fitted["root"]), "--kind", "generative", "--out", str(out),
                 "--set", setting]) == 2
    assert re.search(named, capsys.readouterr().err) and not out.exists()


def test_hyper_parameters_round_trip_through_a_dict():
    config = dataclasses.replace(GenerativeConfig(), encoder_hidden=(16, 8), kappa=0.5)
    assert GenerativeConfig.from_dict(config.to_dict()) == config
