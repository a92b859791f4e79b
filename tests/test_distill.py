"""The student of issue 19, section 6 (`dm-distill`): at most a quarter of the teacher's parameters, the KL
it minimises, and bad options refused before any work."""
import torch

from gnn_policy import checkpoint
from gnn_policy.base import Problem
from gnn_policy.distill import batches, distil, kl, main, parameters, student_of
from tests.helpers import cluster
from twin.params import Thresholds

TH = Thresholds(high=0.6, low=0.1)


def problems():
    return [Problem.of(cluster([[300.0, 200.0, 150.0], [100.0]], standby=3), TH),
            Problem.of(cluster([[50.0], [40.0, 10.0], [500.0, 100.0]], standby=1), TH),
            Problem.of(cluster([[20.0], [30.0], [10.0, 5.0], [400.0]]), TH)]


def test_the_default_student_has_at_most_a_quarter_of_the_parameters():
    teacher, _ = checkpoint.load(None)
    student = student_of(teacher, 7)
    assert 4 * parameters(student) <= parameters(teacher)
    assert student.config.levels == teacher.config.levels and student.config.steps == teacher.config.steps


def test_the_kl_is_zero_for_the_teacher_itself_and_falls_as_the_student_learns():
    teacher, _ = checkpoint.load(None)
    data = batches(problems(), 2)
    with torch.no_grad():
        for graph, ctx in data:
            assert abs(float(kl(teacher(graph, ctx), teacher(graph, ctx), graph))) < 1e-5
    student = student_of(teacher, 5)
    with torch.no_grad():
        before = sum(float(kl(teacher(g, c), student(g, c), g)) for g, c in data)
    student, record = distil(teacher, student, data, data, epochs=30, lr=1e-2, seed=0, progress=False)
    assert before > 0 and record["validation_kl"] < 0.5 * before


def test_dm_distill_refuses_a_student_too_big_before_any_work(tmp_path, capsys):
    out = tmp_path / "student.pt"
    assert main(["--hidden", "16", "--out", str(out)]) == 2
    assert "quarter" in capsys.readouterr().err and not out.exists()
    assert main(["--epochs", "0", "--out", str(out)]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert main(["--teacher", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_the_shipped_student_is_registered_and_small():
    from gnn_policy.registry import make_policy

    teacher, _ = checkpoint.load(None)
    student = make_policy("deepmigration-student")
    assert 4 * parameters(student.net) <= parameters(teacher)
    assert student.decide(problems()[0]).feasible
