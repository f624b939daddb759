"""SIGKILL at the commit points of every stage of `dfkd run` (issue 14), then the same command again: it must end
exactly as a run that was never interrupted (styles, dataset rows, student weights, evaluation).

The moment of each kill is chosen by watching the output folder for the file a commit point writes, never by
sleeping; the kill lands within milliseconds after that file appears, so each test interrupts the run inside or
just after that commit. The states *between* two writes of one commit (a shard without its hash record, a torn
trainer state, a bank without its meta) are also built by hand in the stage tests (tests/synth/test_synth_parts.py,
tests/distill/test_distill_trainer.py, tests/prompts/test_contrastive.py) and in tests/faults/test_integrity.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures import REPO_ROOT, TINY_YAML

from dfkd.cli import main

CLASSES = ["dog", "guitar", "house"]

#: every stage, small: 6 learning steps (checkpoint every 2), 3 shards of 4 images, 6 student steps (checkpoint every 2)
SETTINGS = ["classes=[dog,guitar,house]", "prompts.contrastive.steps=6", "prompts.contrastive.checkpoint_every=2",
            "prompts.contrastive.num_styles=4", "prompts.contrastive.class_batch=3", "synth.images_per_class=4",
            "synth.steps=2", "synth.shard_size=4", "synth.batch_size=4", "synth.progress=false",
            "distill.student=tiny_cnn", "distill.max_steps=6", "distill.checkpointing_steps=2",
            "distill.checkpoints_total_limit=2", "distill.batch_size=4"]

#: commit point -> the file (glob in OUTPUT_DIR) whose appearance triggers the kill
KILL_AT = {
    "prompts checkpoint": "prompts/contrastive/checkpoint.pt",
    "prompts bank before its meta": "prompts/contrastive/styles.safetensors",
    "first shard, before its hash": "dataset/data/train-00000.parquet",
    "a shard's hash record": "dataset/data/.train-00001.parquet.sha256",
    "dataset card": "dataset/README.md",
    "distill checkpoint being written": "checkpoints/checkpoint-4",
    "student exported, evaluation not yet recorded": "student",
}
# Not here, because they last too short for a watch to land inside them: the export's temp folder (its leftovers are
# swept: tests/dfkd/test_runtime.py) and the gap between eval.md and eval.json (built by hand in
# tests/faults/test_integrity.py).


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _argv(out: Path, toy: Path) -> list[str]:
    return ["run", "--config", str(TINY_YAML), f"output_dir={out}", f"eval.data={toy}", *SETTINGS]


def _result(out: Path) -> dict:
    """Everything a run ends with, compared bit for bit (the evaluation by its numbers)."""
    import pyarrow.parquet as pq
    from safetensors.torch import load_file

    rows = {}
    for path in sorted((out / "dataset" / "data").glob("*.parquet")):
        for r in pq.read_table(path).to_pylist():
            key = (r["label"], r["index"])
            assert key not in rows, f"duplicate row {key}"
            rows[key] = r
    evaluation = json.loads((out / "eval.json").read_text())
    return {"styles": load_file(str(out / "prompts" / "contrastive" / "styles.safetensors"))["styles"].tolist(),
            "rows": rows,
            "student": {k: v.tolist() for k, v in load_file(str(out / "student" / "model.safetensors")).items()},
            "eval": [evaluation["domains"], evaluation["mean"]]}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    from dfkd.toydata import write_domainbed

    return write_domainbed(tmp_path_factory.mktemp("toy"), CLASSES, domains=("photo", "sketch"), per_class=2, size=32)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, toy) -> dict:
    out = tmp_path_factory.mktemp("straight")
    assert main(_argv(out, toy)) == 0
    yield _result(out)
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_AT))
def test_sigkill_at_a_commit_point_then_the_same_command_ends_as_an_uninterrupted_run(tmp_path, toy, straight, point):
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "dfkd", *_argv(out, toy)], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not any(out.glob(KILL_AT[point])):
        time.sleep(0.002)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert running, f"the run ended before '{KILL_AT[point]}' appeared: the watch missed the commit point"
    assert main(_argv(out, toy)) == 0
    assert _result(out) == straight
    assert not list(out.rglob(".*.tmp")) and not list(out.glob(".student-*")), "temp files of the killed run were left"
