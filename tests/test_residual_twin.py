"""The residual twin (issue 18 section 3): it overfits a tiny dataset, serves any N, is permutation
equivariant, round-trips through its checkpoint and refuses bad ones, scores candidate actions in one
batch, and plugs into `dm-twin fit` and `dm-twin eval`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import cluster, simulated_dataset
from tests.strategies import cluster_states, moves
from twin import cli, cost, fit_settings
from twin.calibration import CalibratedParams
from twin.fidelity.evaluate import METRICS, load_dataset
from twin.fidelity.twins import CalibratedTwin
from twin.migration import Action as MigrationAction
from twin.migration import IndexedAction, Migration
from twin.records import MoveRecord, PeriodRecord, RecordingWriter
from twin.residual import checkpoint
from twin.residual.checkpoint import ResidualCheckpointError
from twin.residual.features import STATE, StatePast, as_recorded, collate, training_windows
from twin.residual.model import ResidualConfig, ResidualNet
from twin.residual.training import FitConfig, FitError, change_scale, component_losses, fit, loss_of
from twin.residual.twin import ResidualTwin, score_actions

SMALL = ResidualConfig(hidden=8, steps=1, history=2)


def _recording(path, n: int, periods: int, seed: int, future: tuple[int, int] | None = None):
    """A recording of `n` active instances (capacity 100) with two flows each, at random rates, a random
    queue and packet counts, and one flow moved from instance 0 to instance 1 in every other period.
    `future` (t, seed): what is measured after state t (the states after it, the packets of periods t on) is
    drawn from another seed; the actions stay as they were."""
    rng = np.random.default_rng(seed)
    other = np.random.default_rng(seed if future is None else future[1])
    cut = periods if future is None else future[0]
    writer = RecordingWriter(path, {"source": "test", "period_s": 1.0})
    for t in range(periods):
        rates = [(list(rng.uniform(5, 60, 2)), list(other.uniform(5, 60, 2))) for _ in range(n)]
        queue, packets = (rng.uniform(0, 50, n), other.uniform(0, 50, n)), (rng.integers(10, 120, n),
                                                                         other.integers(10, 120, n))
        later = int(t > cut)
        state = cluster([r[later] for r in rates], capacity=100.0, buffer=100.0).with_changes(queue=queue[later],
                                                                                              time_s=float(t))
        action = MigrationAction((Migration(state.flow_ids[0], state.instance_ids[0], state.instance_ids[1]),)) \
            if t % 2 else MigrationAction()
        moves = tuple(MoveRecord(m.flow, m.src, m.dst, "done", 50.0) for m in action.migrations)
        packets = {i: (int(p), int(p), 0) for i, p in zip(state.instance_ids, packets[int(t >= cut)])}
        writer.add_period(state, PeriodRecord(action=action, executed=True, moves=moves, instance_packets=packets))
    writer.close()
    return load_dataset(path, "train")


def _config(**changes) -> FitConfig:
    return FitConfig(**{"net": SMALL, "rollout": 2, "epochs": 60, "patience": 1000, "batch_size": 8, **changes})


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A small network fitted on a recording of N = 3 instances."""
    torch.set_num_threads(1)
    episodes = _recording(tmp_path_factory.mktemp("n3") / "rec", n=3, periods=10, seed=1)
    net, record = fit(episodes, _config(), progress=False)
    return net, record


def test_the_network_overfits_a_tiny_dataset(tmp_path):
    torch.set_num_threads(1)
    episodes = _recording(tmp_path / "rec", n=2, periods=5, seed=0)
    config = _config(net=ResidualConfig(hidden=16, steps=1, history=2), epochs=1500, lr=1e-2, weight_decay=0.0,
                     loss="mse")
    net, record = fit(episodes, config, progress=False)
    batch = collate(training_windows(episodes, "train", config.rollout, 2, CalibratedTwin(net.base)))
    torch.manual_seed(config.seed)
    with torch.no_grad():
        before = float(loss_of(ResidualNet(config.net, net.base)(batch), batch, config))
    assert record["chosen_on"] == "train" and record["chosen_loss"] < 1e-3 < before


def test_predictions_never_read_the_recorded_future(fitted, tmp_path):
    """Two recordings alike up to state t (and the packets of the periods before it), with other states and
    packet counts after it and the same actions: the predictions from t, the base twin's inputs and every
    training window's inputs from t are the same."""
    net, _ = fitted
    t, k = 4, 4
    [one] = _recording(tmp_path / "one", n=3, periods=10, seed=5)
    [two] = _recording(tmp_path / "two", n=3, periods=10, seed=5, future=(t, 6))
    assert not np.allclose(one.utilisation[t + 1:], two.utilisation[t + 1:])
    assert not np.allclose(one.packets_in[t:], two.packets_in[t:])
    twin = ResidualTwin(net)
    a, b = (twin.rollout(e.past(t), [e.action(t + j) for j in range(k)]) for e in (one, two))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.utilisation, y.utilisation)
        np.testing.assert_array_equal(x.queue, y.queue)
        np.testing.assert_array_equal(x.drops, y.drops)
    base = CalibratedTwin(net.base)
    first = [training_windows([e], "train", k, net.config.history, base)[t] for e in (one, two)]
    for name in ("x", "base", "node_steps", "edge_steps", "static"):
        assert torch.equal(first[0][name], first[1][name]), name
    assert not torch.equal(first[0].y.nan_to_num(), first[1].y.nan_to_num())
    with torch.no_grad():
        assert torch.equal(net(collate(first[:1])), net(collate(first[1:])))


def test_an_unfitted_network_with_a_base_predicts_the_base_twin(tmp_path):
    """The network corrects the calibrated twin's rollout: before any fitting its change is near 0, so its
    utilisation and queue are the base twin's."""
    torch.manual_seed(0)
    [episode] = _recording(tmp_path / "rec", n=3, periods=8, seed=7)
    net = ResidualNet(SMALL)
    actions = [episode.action(2 + j) for j in range(3)]
    ours, base = ResidualTwin(net).rollout(episode.past(2), actions), CalibratedTwin(net.base).rollout(
        episode.past(2), actions)
    for x, y in zip(ours, base):
        np.testing.assert_allclose(x.utilisation, y.utilisation, atol=0.05)
        np.testing.assert_allclose(x.queue, y.queue, atol=0.05 * 100.0)


def test_each_component_is_the_member_chosen_for_it_and_never_worse_than_the_base(tmp_path):
    """Per-component choice: each state component comes from the snapshot with its own least loss on the
    choosing windows, the unfitted network (the base twin) among them."""
    torch.set_num_threads(1)
    episodes = _recording(tmp_path / "rec", n=3, periods=8, seed=4)
    net, record = fit(episodes, _config(epochs=15), progress=False)
    assert set(record["chosen_epoch"]) == set(STATE)
    assert net.config.members == len(set(record["chosen_epoch"].values()))
    batch = collate(training_windows(episodes, "train", 2, SMALL.history, CalibratedTwin(net.base)))
    config = _config()
    with torch.no_grad():
        members = [member(batch) for member in net.members]
        np.testing.assert_array_equal(net(batch).numpy(), torch.stack(
            [members[m][..., c] for c, m in enumerate(net.choice.tolist())], dim=-1).numpy())
        ours, base = component_losses(net(batch), batch, config), component_losses(ResidualNet(SMALL, net.base)(batch),
                                                                                   batch, config)
    assert torch.all(ours <= base + 1e-6)


def test_a_normalised_loss_divides_each_component_by_its_one_period_change(tmp_path):
    episodes = _recording(tmp_path / "rec", n=2, periods=6, seed=3)
    batch = collate(training_windows(episodes, "train", 2, 2))
    scale = change_scale(batch)
    first = batch.mask[:, 0]
    expected = (batch.y[first, 0] - batch.x[first, 0]).abs().mean(0).clamp(min=1e-3)
    assert torch.allclose(scale, expected)
    predicted = batch.y.nan_to_num() + 0.5
    config = _config(normalise=1, weights=(1.0, 1.0, 1.0, 1.0))
    raw, normalised = loss_of(predicted, batch, config), loss_of(predicted, batch, config, scale)
    mask = batch.mask[..., None] & torch.isfinite(batch.y)
    assert float(raw) == pytest.approx(0.5)
    assert float(normalised) == pytest.approx(float(((0.5 / scale) * mask).sum() / mask.sum()), rel=1e-5)
    _, record = fit(episodes, _config(normalise=1, epochs=3), progress=False)
    assert record["loss_scale"] == pytest.approx(scale.tolist())


def test_a_network_fitted_on_three_instances_predicts_five(fitted, tmp_path):
    net, _ = fitted
    [five] = _recording(tmp_path / "n5", n=5, periods=6, seed=2)
    steps = ResidualTwin(net).rollout(five.past(2), [five.action(2 + j) for j in range(3)])
    assert len(steps) == 3
    for step in steps:
        for values in (step.utilisation, step.queue, step.drops):
            assert values.shape == (5,) and np.all(np.isfinite(values)) and np.all(values >= 0)
        assert set(step.costs) == {"migration", "resource", "threshold_penalty"}
    scores = ResidualTwin(net).score_actions(five.past(2), [IndexedAction(), IndexedAction(np.array([0]),
                                                                                          np.array([4]))], 2)
    assert scores.utilisation.shape == (2, 2, 5) and np.all(np.isfinite(scores.utilisation))


@settings(max_examples=15, deadline=None)
@given(rates=st.lists(st.lists(st.floats(1.0, 80.0), min_size=1, max_size=3), min_size=2, max_size=5),
       shift=st.integers(1, 4))
def test_relabelling_the_instances_permutes_the_predictions(fitted, rates, shift):
    net, _ = fitted
    n = len(rates)
    order = np.roll(np.arange(n), shift)
    state, relabelled = cluster(rates), cluster([rates[k] for k in order])
    move = IndexedAction(np.array([0]), np.array([1]))  # flow f0.0 from nf0 to nf1
    position = {int(k): j for j, k in enumerate(order)}  # original instance k is relabelled nf{position[k]}
    relabelled_move = IndexedAction(np.array([relabelled.flow_index[f"f{position[0]}.0"]]), np.array([position[1]]))
    twin = ResidualTwin(net)
    a = twin.score_actions(state, [move], 3)
    b = twin.score_actions(relabelled, [relabelled_move], 3)
    np.testing.assert_allclose(a.utilisation[..., order], b.utilisation, atol=1e-5)
    np.testing.assert_allclose(a.queue[..., order], b.queue, atol=1e-3)
    np.testing.assert_allclose(a.threshold_penalty, b.threshold_penalty, rtol=1e-4, atol=1e-3)


def test_candidates_are_scored_in_one_batch_as_one_by_one(fitted):
    net, _ = fitted
    twin = ResidualTwin(net)
    state = cluster([[40.0, 30.0], [10.0], [5.0]], capacity=100.0)
    candidates = [IndexedAction(), IndexedAction(np.array([0]), np.array([1])),
                  IndexedAction(np.array([0, 1]), np.array([2, 2]))]
    together = twin.score_actions(state, candidates, 4)
    assert together.utilisation.shape == together.queue.shape == together.drops.shape == (3, 4, 3)
    assert together.threshold_penalty.shape == (3, 4)
    for c, candidate in enumerate(candidates):
        alone = twin.score_actions(state, [candidate], 4)
        np.testing.assert_allclose(together.utilisation[c], alone.utilisation[0], atol=1e-6)
        np.testing.assert_allclose(together.threshold_penalty[c], alone.threshold_penalty[0], rtol=1e-6)
    # the first period's penalty is the cost model's on the state after the candidate's moves (rates known now)
    moved = state.utilisation.copy()
    moved[[0, 2]] += np.array([-0.7, 0.7])
    assert together.threshold_penalty[2, 0] == pytest.approx(
        cost.threshold_penalty(moved, state.active, twin.thresholds, twin.params))
    with pytest.raises(ValueError, match="k must be"):
        twin.score_actions(state, candidates, 0)


def test_a_checkpoint_round_trips(fitted, tmp_path):
    net, record = fitted
    path = tmp_path / "model.pt"
    checkpoint.save(path, net, record)
    loaded, stored = checkpoint.load(path)
    assert loaded.config == net.config and stored["chosen_epoch"] == record["chosen_epoch"]
    state = cluster([[40.0, 30.0], [10.0]], capacity=100.0)
    move = [IndexedAction(np.array([0]), np.array([1]))]
    np.testing.assert_array_equal(ResidualTwin(net).score_actions(state, move, 2).utilisation,
                                  ResidualTwin(loaded).score_actions(state, move, 2).utilisation)


def test_a_bad_checkpoint_is_refused_with_a_clear_error(fitted, tmp_path):
    net, _ = fitted
    good = tmp_path / "good.pt"
    checkpoint.save(good, net)
    stored = torch.load(good, weights_only=True)
    cases = {"not a readable torch checkpoint": b"not a checkpoint at all",
             "not a residual-twin checkpoint": {**stored, "format": "deepmigration-gn"},
             "version 0": {**stored, "version": 0},
             "unusable network config": {**stored, "config": {**stored["config"], "colour": 1}},
             "weights do not fit": {**stored, "config": {**stored["config"], "hidden": 12}},
             "version 1; this code reads version 3": {**stored, "version": 1},
             "version 2; this code reads version 3": {**stored, "version": 2},
             "unusable base-twin parameters": {**stored, "base": {**stored["base"], "arrival_ratio": -1.0}},
             "config and the stored base-twin parameters disagree": {**stored, "base": None}}
    for message, content in cases.items():
        path = tmp_path / "bad.pt"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        with pytest.raises(ResidualCheckpointError, match=message):
            checkpoint.load(path)
    with pytest.raises(ResidualCheckpointError, match="no residual-twin model"):
        checkpoint.load(tmp_path / "missing.pt")


def test_a_fit_without_training_transitions_is_refused(tmp_path):
    episodes = _recording(tmp_path / "rec", n=2, periods=3, seed=0)
    for episode in episodes:
        episode.split[:] = "test"
    with pytest.raises(FitError, match="no training transitions"):
        fit(episodes, _config(), progress=False)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    root = tmp_path_factory.mktemp("simulated")
    simulated_dataset(root, steps=30)
    params = root.parent / "params.json"
    assert cli.main(["calibrate", "--data", str(root), "--out", str(params)]) == 0
    return root, params


def test_dm_twin_fit_and_eval_report_the_residual_twin(simulated, tmp_path, capsys):
    root, params = simulated
    model, logdir = tmp_path / "residual.pt", tmp_path / "runs"
    assert cli.main(["fit", "--data", str(root), "--kind", "residual", "--out", str(model), "--set", "epochs=3",
                     "--logdir", str(logdir)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["chosen_on"] == "validation" and summary["epochs_run"] == 3
    assert any(path.name.startswith("events.out.tfevents") for path in logdir.iterdir())
    assert checkpoint.load(model)[1]["data"] == str(root)
    out = tmp_path / "fidelity.json"
    assert cli.main(["eval", "--data", str(root), "--params", str(params), "--model", f"residual={model}",
                     "--json", str(out), "--k", "1,5"]) == 0
    rows = [r for r in json.loads(out.read_text()) if r["twin"] == "residual"]
    assert {(r["k"], r["metric"]) for r in rows} == {(k, m) for k in (1, 5) for m in METRICS}
    assert all(r["n"] > 0 for r in rows if r["metric"] in ("utilisation", "queue", "drops"))


def test_dm_twin_refuses_a_bad_model_or_output_in_one_line(simulated, tmp_path, capsys):
    root, params = simulated
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    for argv, named in ((["eval", "--data", str(root), "--params", str(params), "--model", f"residual={bad}"],
                         "not a readable torch checkpoint"),
                        (["fit", "--data", str(root), "--kind", "residual", "--out", str(tmp_path)],
                         "is a directory"),
                        (["fit", "--data", str(root), "--kind", "residual", "--out", str(tmp_path / "no" / "m.pt")],
                         "does not exist")):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_shipped_model_moves_predicted_load_with_a_move():
    """The shipped fit has learned what a move does: the next period's utilisation falls at the source and
    rises at the destination, against doing nothing."""
    state = cluster([[60.0, 50.0], [20.0]], capacity=250.0, buffer=800.0, standby=2)
    scores = score_actions(state, [IndexedAction(), IndexedAction(np.array([0]), np.array([1]))], 1)
    stay, move = scores.utilisation[0, 0], scores.utilisation[1, 0]
    assert move[0] < stay[0] and move[1] > stay[1]
    np.testing.assert_array_equal(move[2:], 0.0)  # standby instances stay idle


def _members(fitted_members: list[bool], choice: list[int], seed: int) -> ResidualNet:
    """A three-member network on the default calibrated base, each component taken from `choice`'s member;
    the members not in `fitted_members` left as initialised (the base twin), the others with random heads."""
    torch.manual_seed(seed)
    net = ResidualNet(ResidualConfig(hidden=8, steps=2, history=2, members=3))
    with torch.no_grad():
        for member, fitted_member in zip(net.members, fitted_members):
            if fitted_member:
                for layer in (member.head[-1], member.linear):
                    layer.weight.normal_(0.0, 0.3)
                    layer.bias.normal_(0.0, 0.05)
        net.choice.copy_(torch.tensor(choice))
    return net.eval()


class _AllMembers(ResidualNet):
    """The full scoring the pruned one replaces: every member rolled out, as in training (`forward`)."""

    def predict(self, batch, components):
        with torch.no_grad():
            return self(batch)


@settings(max_examples=25, deadline=None)
@given(state=cluster_states(max_instances=5, max_flows=12), data=st.data(),
       fitted_members=st.lists(st.booleans(), min_size=3, max_size=3),
       choice=st.lists(st.integers(0, 2), min_size=4, max_size=4), k=st.integers(1, 3), seed=st.integers(0, 99))
def test_the_pruned_scoring_equals_every_member_rolled_out(state, data, fitted_members, choice, k, seed):
    """Only the members of the reported components run, and a member at its initial weights is replaced by
    the base twin's prediction: the scores are those of all three members rolled out (the look-ahead's
    utilisation-only scoring too)."""
    torch.set_num_threads(1)
    net = _members(fitted_members, choice, seed)
    full = _AllMembers(net.config, net.base)
    full.load_state_dict(net.state_dict())
    candidates = [IndexedAction(), data.draw(moves(state))]
    want = ResidualTwin(full.eval()).score_actions(state, candidates, k)
    for queues in (True, False):
        got = ResidualTwin(net).score_actions(state, candidates, k, queues=queues)
        np.testing.assert_allclose(got.utilisation, want.utilisation, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(got.threshold_penalty, want.threshold_penalty, rtol=1e-6, atol=1e-9)
        if queues:
            np.testing.assert_allclose(got.queue, want.queue, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(got.drops, want.drops, rtol=1e-6, atol=1e-6)
        else:
            assert got.queue is None and got.drops is None


def test_only_an_unfitted_member_is_taken_for_its_base():
    net = _members([False, True, True], [0, 1, 2, 0], seed=0)
    assert [member.is_base() for member in net.members] == [True, False, False]
    with torch.no_grad():
        net.members[0].linear.bias[1] = 1e-6  # the smallest change makes it a network of its own again
    assert not net.members[0].is_base()
    assert not ResidualNet(ResidualConfig(hidden=8, steps=1, history=2, base=())).members[0].is_base()  # no base
    with pytest.raises(ValueError, match="unknown state components"):
        net.predict(None, ("utilisation", "latency"))


@settings(max_examples=20, deadline=None)
@given(state=cluster_states(max_instances=5, max_flows=12), data=st.data(), k=st.integers(1, 3))
def test_the_base_twins_states_are_its_rollouts(state, data, k):
    """What the residual twin reads of its base (`states`: no durations, no costs) is the full rollout's."""
    base = CalibratedTwin(CalibratedParams())
    past = StatePast(state)
    actions = [as_recorded(state, data.draw(moves(state)))] + [as_recorded(state, IndexedAction())] * (k - 1)
    for full, alone in zip(base.rollout(past, actions), base.states(past, actions), strict=True):
        for name in ("utilisation", "queue", "drops"):
            np.testing.assert_array_equal(getattr(alone, name), getattr(full, name))
        assert alone.costs == {} and alone.migration_ms.size == 0


def test_fit_settings_reach_the_network_shape():
    config = fit_settings.configured(FitConfig(), ["net.history=5", "seed=2"], FitError)
    assert (config.net.history, config.seed, config.net.hidden) == (5, 2, FitConfig().net.hidden)
    for setting, named in (("net.depth=2", "'net.depth' is not a numeric hyper-parameter"),
                           ("net.history=many", "net.history takes a number of type int")):
        with pytest.raises(FitError, match=named):
            fit_settings.configured(FitConfig(), [setting], FitError)
