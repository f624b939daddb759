"""`dfkd run` on the tiny config: prompts -> synth -> distill -> eval, then a re-run that skips every stage; and its
sequencing on one tiny real run (3 classes x 2 images, plain prompts, 2 student steps, one eval domain): what each
stage says and writes on a first run, a repeated run and a run that lost its evaluation, and the skip checks
(``dataset_is_complete``, ``student_is_current``, ``eval_is_current``) on copies of its outputs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from types import SimpleNamespace

import pytest
from fixtures import TINY_YAML, tiny_config

from dfkd.cli import main as dfkd_main
from dfkd.errors import UserError
from dfkd.pipeline import STAGES, _summary
from distill.stage import eval_is_current, student_is_current
from synth.stage import dataset_is_complete

CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """`dfkd run` builds Accelerate state in this process; leave none behind for later tests."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.mark.slow
def test_dfkd_run_whole_pipeline_then_skips_and_resumes(tmp_path, capsys):
    from dfkd.toydata import write_domainbed

    toy = write_domainbed(tmp_path / "toy", CLASSES, per_class=2, size=48)
    argv = ["run", "--config", str(TINY_YAML), f"output_dir={tmp_path / 'run'}", f"eval.data={toy}",
            "prompts.contrastive.steps=10", "distill.student=tiny_cnn"]
    assert dfkd_main(argv) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    assert "1/4 prompts: learning the 'contrastive' prompt method" in out
    assert (run / "prompts").is_dir() and (run / "dataset" / "preview.png").is_file()
    assert (run / "student" / "model.safetensors").is_file() and (run / "eval.md").is_file()
    for where in ("dataset", "preview grid", "student", "eval table"):
        assert where in out
    assert out.rstrip().endswith("are meaningless by design; they only show that the pipeline runs")
    assert "> **Note:** tiny:clip, tiny:sd have random weights" in (run / "student" / "README.md").read_text()
    data = json.loads((run / "eval.json").read_text())
    assert [r["domain"] for r in data["domains"]] == ["painting", "photo", "sketch"] and data["data"] == str(toy)
    config = json.loads((run / "student" / "config.json").read_text())
    assert config["dfkd"]["images"] == 56 and config["label_names"] == CLASSES  # read the real synth output

    # a second run skips every stage and keeps the student
    mtime = (run / "student" / "model.safetensors").stat().st_mtime_ns
    assert dfkd_main(argv) == 0
    out = capsys.readouterr().out
    assert "1/4 prompts: styles in" in out and "are learned for this config; skipping" in out
    assert "synth: dataset" in out and "complete; skipping" in out and "already trained; skipping" in out
    assert (run / "student" / "model.safetensors").stat().st_mtime_ns == mtime

    # a lost student (a killed export) is rebuilt from the latest checkpoint, not from scratch
    for f in (run / "student").iterdir():
        f.unlink()
    assert dfkd_main(argv) == 0
    out = capsys.readouterr().out
    assert "resuming from the latest checkpoint" in out and (run / "student" / "model.safetensors").is_file()


def _run_argv(out):
    """`dfkd run` on 3 classes x 4 images, plain prompts, 6 tiny_cnn steps checkpointed every 3."""
    return ["run", "--config", str(TINY_YAML), f"output_dir={out}", "classes=[dog,guitar,house]", "prompts.method=plain",
            "synth.images_per_class=4", "synth.steps=2", "synth.shard_size=12", "synth.progress=false",
            "distill.student=tiny_cnn", "distill.max_steps=6", "distill.checkpointing_steps=3",
            "distill.checkpoints_total_limit=2", "distill.batch_size=4"]


def _student_weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "student" / "model.safetensors"))


def test_dfkd_run_resumes_a_lost_student_at_its_checkpoint_and_ends_as_a_straight_run(tmp_path, capsys):
    """A run killed after its step-3 checkpoint (no student, no later checkpoint): `dfkd run` says it resumes,
    really starts at step 3 (the checkpoint is read, not rewritten by a run from step 0) and ends with the
    straight run's weights."""
    import shutil

    import torch

    from distill.trainer import list_checkpoints

    run = tmp_path / "run"
    assert dfkd_main(_run_argv(run)) == 0
    straight = _student_weights(run)
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-3", "checkpoint-6"]
    shutil.rmtree(run / "student")
    shutil.rmtree(run / "checkpoints" / "checkpoint-6")
    kept = run / "checkpoints" / "checkpoint-3"
    stamps = {p: p.stat().st_mtime_ns for p in kept.rglob("*") if p.is_file()}
    capsys.readouterr()

    assert dfkd_main(_run_argv(run)) == 0
    out = capsys.readouterr().out
    assert "resuming from the latest checkpoint" in out and "training the student" not in out
    assert {p: p.stat().st_mtime_ns for p in kept.rglob("*") if p.is_file()} == stamps
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-3", "checkpoint-6"]
    resumed = _student_weights(run)
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight), [k for k in straight
                                                                         if not torch.equal(resumed[k], straight[k])]


@pytest.mark.parametrize("change", ["distill.lr=0.01", "distill.loss.temperature=2"])
def test_a_student_of_other_distill_settings_is_not_taken_as_done(tmp_path, change):
    """`dfkd run` skips distillation when student_is_current(cfg); a student exported under other distill settings
    must not count (student_is_current may also refuse it with a UserError)."""
    from fixtures import tiny_config

    from dfkd.errors import UserError
    from dfkd.toydata import write_synthetic_dataset
    from distill.trainer import train

    dataset = write_synthetic_dataset(tmp_path / "dataset", CLASSES, per_class=2, size=32)
    common = [f"distill.dataset={dataset}", "distill.student=tiny_cnn", "distill.max_steps=2", "distill.batch_size=4"]
    cfg = tiny_config(tmp_path / "run", *common)
    assert train(cfg).student_dir is not None
    assert student_is_current(cfg)
    try:
        done = student_is_current(tiny_config(tmp_path / "run", *common, change))
    except UserError:
        done = False
    assert not done


def test_run_stops_with_one_line_on_bad_student(tmp_path, capsys):
    rc = dfkd_main(["run", "--config", str(TINY_YAML), f"output_dir={tmp_path}", "prompts.method=plain",
                    "distill.student=not_a_model_xyz", "synth.images_per_class=2", "synth.shard_size=14"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unknown student 'not_a_model_xyz'" in err[0]


# ----------------------------------------------------------------------------- sequencing and skip checks

TABLE_HEADER = "| domain | images | teacher (zero-shot) top-1 % | student top-1 % |"
STAGE_FILES = ("dataset", "student", "checkpoints", "eval.json", "eval.md")


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _dfkd_run(argv) -> str:
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            assert dfkd_main(argv) == 0
    finally:
        _reset_accelerate()
    return buf.getvalue()


def _stamps(out):
    """mtime of every file the stages write (the prompts stage rewrites the resolved config on every run)."""
    files = [p for name in STAGE_FILES for p in ([out / name] if (out / name).is_file() else (out / name).rglob("*"))]
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One output folder after a first `dfkd run`: its stdout and the stage files' mtimes. The tests that run it
    again (a repeated run, a run that lost its evaluation) do so themselves, so that each run is credited to the
    test that checks it (mutation testing runs only the tests that reach a mutated function)."""
    from dfkd.toydata import write_domainbed

    root = tmp_path_factory.mktemp("pipeline")
    classes = ["dog", "guitar", "house"]
    toy = write_domainbed(root / "toy", classes, domains=("photo",), per_class=1, size=32)
    out = root / "run"
    overrides = [f"output_dir={out}", f"classes=[{','.join(classes)}]", "prompts.method=plain",
                 "synth.images_per_class=2", "synth.steps=1", "synth.shard_size=6", "synth.progress=false",
                 "distill.student=tiny_cnn", "distill.max_steps=2", "distill.batch_size=3",
                 "distill.checkpointing_steps=2", f"eval.data={toy}"]
    argv = ["run", "--config", str(TINY_YAML), *overrides]
    first = _dfkd_run(argv)
    return SimpleNamespace(out=out, toy=toy, argv=argv, overrides=overrides[1:], first=first, after_first=_stamps(out))


def _cfg(out, runs, *extra):
    """The run's config with another output folder (and extra overrides)."""
    return tiny_config(out, *runs.overrides, *extra)


def _summary_lines(out):
    return [f"  dataset       {out / 'dataset'}", f"  preview grid  {out / 'dataset' / 'preview.png'}",
            f"  student       {out / 'student'}", f"  eval table    {out / 'eval.md'}"]


# --- the three runs


def test_first_run_runs_every_stage_and_prints_the_table_once(runs):
    text = runs.first
    for said in ("1/4 prompts: method 'plain' needs no learning; skipping", "2/4 synth: generating",
                 "3/4 distill: training the student", "4/4 eval: done"):
        assert said in text, said
    assert text.count("skipping") == 1 and "resuming" not in text and "evaluating" not in text
    assert text.count(TABLE_HEADER) == 1  # distill evaluated and printed it; the summary does not repeat it
    lines = text.splitlines()
    assert all(line in lines for line in _summary_lines(runs.out)), lines[-8:]
    assert "(not produced)" not in text
    assert {"dataset/preview.png", "student/model.safetensors", "eval.json", "eval.md"} <= set(runs.after_first)


def test_a_repeated_run_skips_every_stage_rewrites_nothing_and_shows_the_table(runs):
    before = _stamps(runs.out)
    text = _dfkd_run(runs.argv)
    for said in ("2/4 synth: dataset", "complete; skipping", "3/4 distill: student", "already trained; skipping",
                 "4/4 eval: done"):
        assert said in text, said
    assert "generating" not in text and "training the student" not in text and "evaluating" not in text
    assert _stamps(runs.out) == before
    assert text.count(TABLE_HEADER) == 1  # nothing was evaluated now: the summary shows the stored table
    table, note = text.rstrip("\n").rsplit("\n", 1)
    assert (table + "\n").endswith((runs.out / "eval.md").read_text())  # the stored table, then the tiny-model note
    assert note.startswith("note: tiny:clip, tiny:sd have random weights")


def test_a_run_that_lost_its_evaluation_evaluates_again_and_nothing_else(runs):
    before = _stamps(runs.out)
    (runs.out / "eval.json").unlink()
    (runs.out / "eval.md").unlink()
    text = _dfkd_run(runs.argv)
    assert "already trained; skipping" in text and "4/4 eval: evaluating teacher and student" in text
    data = json.loads((runs.out / "eval.json").read_text())
    assert data["data"] == str(runs.toy) and [r["domain"] for r in data["domains"]] == ["photo"]
    kept = {k: v for k, v in _stamps(runs.out).items() if k not in ("eval.json", "eval.md")}
    assert kept == {k: v for k, v in before.items() if k not in ("eval.json", "eval.md")}


def test_a_run_with_another_distill_lr_refuses_the_old_work_then_retrains_on_overwrite(runs, tmp_path, capsys):
    """`dfkd run` once kept an old student (and resumed its checkpoints) after distill.lr changed. Now the old
    checkpoints and student are another fingerprint's: one line offers the choice, and distill.overwrite=true
    retrains (the dataset is kept)."""
    out = tmp_path / "run"
    shutil.copytree(runs.out, out, copy_function=shutil.copy2)
    argv = ["run", "--config", str(TINY_YAML), f"output_dir={out}", *runs.overrides, "distill.lr=0.01"]
    assert dfkd_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other distill settings or data" in err[0] and "distill.overwrite=true" in err[0]
    dataset = {p: p.stat().st_mtime_ns for p in (out / "dataset").rglob("*") if p.is_file()}
    assert len(dataset) >= 3
    text = _dfkd_run([*argv, "distill.overwrite=true"])
    assert "2/4 synth: dataset" in text and "3/4 distill: training the student" in text
    assert {p: p.stat().st_mtime_ns for p in (out / "dataset").rglob("*") if p.is_file()} == dataset
    assert student_is_current(_cfg(out, runs, "distill.lr=0.01")) and not student_is_current(_cfg(out, runs))


def test_a_contrastive_run_checks_the_prompt_stage_before_any_stage_runs(tmp_path, capsys):
    """Every stage's preflight runs first: a missing style dictionary (the prompts stage's input) stops the run
    with one line before any stage starts."""
    argv = ["run", "--config", str(TINY_YAML), f"output_dir={tmp_path}", "prompts.method=contrastive",
            f"prompts.style_dictionary={tmp_path / 'no_such_styles.txt'}", "distill.student=tiny_cnn"]
    assert dfkd_main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "prompts.style_dictionary=" in err[0] and "does not exist" in err[0], err
    assert "1/4" not in captured.out and "2/4" not in captured.out
    assert not (tmp_path / "dataset").exists()


# --- dataset_is_complete


@pytest.fixture
def dataset_copy(runs, tmp_path):
    """A copy of the finished run's dataset in a fresh output folder."""
    shutil.copytree(runs.out / "dataset", tmp_path / "dataset", copy_function=shutil.copy2)
    return tmp_path


def test_dataset_is_complete_for_the_complete_dataset_of_this_config_and_reads_only(runs, dataset_copy):
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in dataset_copy.rglob("*") if p.is_file()}
    assert dataset_is_complete(_cfg(dataset_copy, runs))
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in dataset_copy.rglob("*") if p.is_file()} == before
    assert not dataset_is_complete(_cfg(dataset_copy, runs, "synth.overwrite=true"))
    assert not dataset_is_complete(_cfg(dataset_copy / "empty", runs))


def test_dataset_is_complete_needs_the_card_and_every_planned_shard(runs, dataset_copy):
    from dfkd.schema import CARD_NAME, DATA_DIR

    cfg = _cfg(dataset_copy, runs)
    shards = sorted((dataset_copy / "dataset" / DATA_DIR).glob("*.parquet"))
    assert len(shards) == 1  # 6 images in shards of 6
    card = dataset_copy / "dataset" / CARD_NAME
    card_text = card.read_text()
    card.unlink()  # a run killed after its last shard, before the card
    assert not dataset_is_complete(cfg)
    card.write_text(card_text)
    assert dataset_is_complete(cfg)
    assert not dataset_is_complete(_cfg(dataset_copy, runs, "synth.images_per_class=3"))  # a second shard is planned
    shards[-1].unlink()
    assert not dataset_is_complete(cfg)


def test_dataset_is_complete_refuses_a_dataset_of_another_config(runs, dataset_copy):
    with pytest.raises(UserError, match="different config"):
        dataset_is_complete(_cfg(dataset_copy, runs, "synth.steps=2"))


# --- student_is_current


@pytest.fixture
def student_copy(runs, tmp_path):
    shutil.copytree(runs.out / "student", tmp_path / "student", copy_function=shutil.copy2)
    return tmp_path


def test_student_is_current_for_an_exported_student_of_this_student_and_classes(runs, student_copy):
    assert student_is_current(_cfg(student_copy, runs))
    assert not student_is_current(_cfg(student_copy, runs, "distill.student=resnet18"))
    assert not student_is_current(_cfg(student_copy, runs, "classes=[dog,guitar,horse]"))
    assert not student_is_current(_cfg(student_copy / "empty", runs))


def test_student_is_current_only_for_the_synthetic_data_it_was_trained_on(runs, tmp_path):
    """The student's fingerprint includes its data: another shard in the dataset it reads (OUTPUT_DIR/dataset, or
    distill.dataset when set) makes it stale."""
    for name in ("student", "dataset"):
        shutil.copytree(runs.out / name, tmp_path / name, copy_function=shutil.copy2)
    shutil.copytree(runs.out / "dataset", tmp_path / "grown", copy_function=shutil.copy2)
    shard = min((tmp_path / "grown" / "data").glob("*.parquet"))

    def add_shard(data):  # a committed shard: the parquet and its hash record
        shutil.copy2(shard, data / "train-99999.parquet")
        shutil.copy2(shard.with_name(f".{shard.name}.sha256"), data / ".train-99999.parquet.sha256")

    add_shard(tmp_path / "grown" / "data")
    assert student_is_current(_cfg(tmp_path, runs))
    assert not student_is_current(_cfg(tmp_path, runs, f"distill.dataset={tmp_path / 'grown'}"))
    add_shard(tmp_path / "dataset" / "data")
    assert not student_is_current(_cfg(tmp_path, runs))
    (tmp_path / "dataset" / "data" / ".train-99999.parquet.sha256").unlink()  # a shard never committed
    with pytest.raises(UserError, match="train-99999.parquet' is not finished"):
        student_is_current(_cfg(tmp_path, runs))


def test_student_is_current_needs_both_files_and_the_dfkd_metadata(runs, student_copy):
    cfg = _cfg(student_copy, runs)
    config, weights = student_copy / "student" / "config.json", student_copy / "student" / "model.safetensors"
    meta = json.loads(config.read_text())
    weights.rename(weights.with_suffix(".bak"))
    assert not student_is_current(cfg)  # a killed export: config written, weights not
    weights.with_suffix(".bak").rename(weights)
    config.unlink()
    assert not student_is_current(cfg)
    config.write_text(json.dumps({k: v for k, v in meta.items() if k != "dfkd"}))  # a model saved by another tool
    assert not student_is_current(cfg)
    # ... whose checksums match (so only the missing dfkd block, with its fingerprint, says "not this run's")
    from dfkd.schema import file_sha256
    from distill.export import CHECKSUMS_NAME

    sums = json.loads((config.parent / CHECKSUMS_NAME).read_text())
    (config.parent / CHECKSUMS_NAME).write_text(json.dumps({**sums, "config.json": file_sha256(config)}))
    assert not student_is_current(cfg)
    config.write_text("[1, 2]")  # JSON, but not a config (and its checksum matches): not this run's student
    (config.parent / CHECKSUMS_NAME).write_text(json.dumps({**sums, "config.json": file_sha256(config)}))
    assert not student_is_current(cfg)
    config.write_text(json.dumps(meta))
    (config.parent / CHECKSUMS_NAME).write_text(json.dumps({**sums, "config.json": file_sha256(config)}))
    assert student_is_current(cfg)  # the same checks pass for the real thing


# --- eval_is_current


@pytest.fixture
def eval_copy(runs, tmp_path):
    (tmp_path / "student").mkdir()
    shutil.copy2(runs.out / "student" / "model.safetensors", tmp_path / "student" / "model.safetensors")
    shutil.copy2(runs.out / "eval.json", tmp_path / "eval.json")
    shutil.copy2(runs.out / "eval.md", tmp_path / "eval.md")
    return tmp_path


def test_eval_is_current_for_a_named_student_and_a_whole_eval_json_only(runs, eval_copy):
    """With eval.student set, the evaluation is of that folder's weights; a torn eval.json, or eval.md left alone by
    a kill between the two, is not a finished evaluation, and the eval stage reports nothing then."""
    from safetensors.torch import load_file, save_file

    from distill.stage import EvalStage

    other = eval_copy / "other"
    other.mkdir()
    save_file({k: v * 2 for k, v in load_file(str(runs.out / "student" / "model.safetensors")).items()},
              str(other / "model.safetensors"))
    assert eval_is_current(_cfg(eval_copy, runs, f"eval.student={eval_copy / 'student'}"))
    assert not eval_is_current(_cfg(eval_copy, runs, f"eval.student={other}"))
    assert EvalStage().report(_cfg(eval_copy, runs)) == (eval_copy / "eval.md").read_text() != ""
    (eval_copy / "eval.json").write_text('{"domains": [')
    assert not eval_is_current(_cfg(eval_copy, runs)) and EvalStage().report(_cfg(eval_copy, runs)) == ""
    (eval_copy / "eval.json").unlink()
    assert not eval_is_current(_cfg(eval_copy, runs)) and EvalStage().report(_cfg(eval_copy, runs)) == ""


def test_eval_is_current_for_an_evaluation_of_this_data_and_these_student_weights(runs, eval_copy):
    """Decided by the evaluation's fingerprint (student weights, data, settings), not by file times."""
    from safetensors.torch import load_file, save_file

    cfg = _cfg(eval_copy, runs)
    student, results = eval_copy / "student" / "model.safetensors", eval_copy / "eval.json"
    assert eval_is_current(cfg)
    assert not eval_is_current(_cfg(eval_copy, runs, f"eval.data={runs.toy.parent / 'other'}"))
    t = results.stat().st_mtime_ns
    os.utime(student, ns=(t + 10**9, t + 10**9))
    assert eval_is_current(cfg)  # the same weights, touched later: nothing to evaluate again
    weights = load_file(str(student))
    save_file({k: v + 1 for k, v in weights.items()}, str(student))
    assert not eval_is_current(cfg)  # the student was retrained after this evaluation


def test_eval_is_current_needs_both_the_results_and_the_student(runs, eval_copy):
    cfg = _cfg(eval_copy, runs)
    (eval_copy / "student" / "model.safetensors").unlink()
    assert not eval_is_current(cfg)
    shutil.copy2(runs.out / "student" / "model.safetensors", eval_copy / "student" / "model.safetensors")
    (eval_copy / "eval.json").unlink()
    assert not eval_is_current(cfg)


# --- the summary


def test_summary_marks_what_was_not_produced_and_prints_no_table(tmp_path, capsys):
    _summary(tiny_config(tmp_path), STAGES)
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert all(line + "  (not produced)" in lines for line in _summary_lines(tmp_path)), lines
    assert TABLE_HEADER not in text
