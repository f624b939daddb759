"""The benchmark's scheduler (bench/digits/jobs.py): dependencies first, results by key, failures stop the run."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from fixtures import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))  # bench/ is not an installed package

from bench.digits.jobs import Task, execute


def _tasks(tmp_path: Path) -> list[Task]:
    # stdlib functions pickle by name, so they run in spawned workers; a read before its write would fail
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    return [
        Task("read-b", Path.read_text, (b,), after=("write-b",)),  # listed first, must wait
        Task("write-a", Path.write_text, (a, "alpha")),
        Task("write-b", Path.write_text, (b, "beta"), after=("write-a",)),
        Task("sqrt", math.sqrt, (16.0,)),
    ]


@pytest.mark.parametrize("jobs", [1, 2])
def test_dependencies_run_first_and_results_come_back_by_key(tmp_path, jobs):
    results = execute(_tasks(tmp_path), jobs=jobs, threads=1, log_dir=tmp_path / "logs")
    assert results == {"write-a": 5, "write-b": 4, "read-b": "beta", "sqrt": 4.0}
    if jobs > 1:  # each task's output has its own log
        assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(f"{k}.log" for k in results)


def test_a_failing_task_stops_the_run_with_its_log(tmp_path, capsys):
    tasks = [Task("bad", math.sqrt, (-1.0,)), Task("after-bad", math.sqrt, (4.0,), after=("bad",))]
    with pytest.raises(SystemExit) as e:
        execute(tasks, jobs=2, threads=1, log_dir=tmp_path / "logs")
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "task bad failed (ValueError: math domain error)" in err and "=== bad ===" in err


def test_unknown_dependency_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dependencies"):
        execute([Task("x", math.sqrt, (1.0,), after=("nope",))], jobs=1, threads=1, log_dir=tmp_path)
