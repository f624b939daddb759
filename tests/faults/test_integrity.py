"""Damaged, torn and swapped files of every kind the project writes (issue 14, items 3, 4 and 6): each is either
remade with a notice, ending as an undamaged run does, or refused in one line (exit 2) with nothing lost; none is
trusted and none gives a traceback."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from fixtures import TINY_YAML, tiny_config

from dfkd.cli import main
from dfkd.errors import UserError

SYNTH = ["classes=[dog,guitar,house]", "synth.images_per_class=2", "synth.steps=1", "synth.shard_size=4",
         "synth.batch_size=4", "synth.progress=false", "prompts.method=mix", "synth.diagnostics_max_per_class=2",
         "synth.preview_per_class=1"]
CLASSES = ["dog", "guitar", "house"]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def flip_a_byte(path: Path, at: float = 0.4) -> None:
    """Corrupt one byte inside the file (a parquet shard's data pages: its footer, schema and tag still read)."""
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * at)] ^= 0xFF
    path.write_bytes(bytes(raw))


def _one_line_error(capsys) -> str:
    """The one line of stderr (progress bars aside)."""
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not re.search(r"\d+%\|", line)]
    assert len(err) == 1 and err[0].startswith("dfkd: error: "), err
    return err[0]


def _rows(dataset: Path) -> dict:
    import pyarrow.parquet as pq

    return {(r["label"], r["index"]): r for p in sorted((dataset / "data").glob("*.parquet"))
            for r in pq.read_table(p).to_pylist()}


# ------------------------------------------------------------------------------------------------ synthetic shards
@pytest.fixture(scope="module")
def synth_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--config", str(TINY_YAML), f"output_dir={out}", *SYNTH]) == 0
    return out, _rows(out / "dataset")


def _copy(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "hash record lost"])
def test_synth_remakes_a_damaged_shard_with_a_notice_and_ends_as_before(synth_run, tmp_path, capsys, damage):
    run = _copy(synth_run[0], tmp_path)
    shard = run / "dataset" / "data" / "train-00000.parquet"
    if damage == "flipped byte":
        flip_a_byte(shard)
    elif damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:100])
    else:
        (shard.parent / ".train-00000.parquet.sha256").unlink()  # a kill between the shard's rename and its record
    capsys.readouterr()
    assert main(["synth", "--config", str(TINY_YAML), f"output_dir={run}", *SYNTH]) == 0
    err = capsys.readouterr().err
    if damage != "hash record lost":  # an unrecorded shard is an unfinished one: remade without a word
        assert "1 shard(s) damaged since they were written (train-00000.parquet); making them again" in err
    assert _rows(run / "dataset") == synth_run[1]


def test_a_damaged_synth_state_over_this_configs_shards_is_written_anew(synth_run, tmp_path):
    run = _copy(synth_run[0], tmp_path)
    (run / "dataset" / ".dfkd_synth.json").write_text('{"fingerpr')  # torn
    assert main(["synth", "--config", str(TINY_YAML), f"output_dir={run}", *SYNTH]) == 0
    assert json.loads((run / "dataset" / ".dfkd_synth.json").read_text())["fingerprint"]
    assert _rows(run / "dataset") == synth_run[1]


def test_a_damaged_synth_state_over_another_configs_shards_is_refused_in_one_line(synth_run, tmp_path, capsys):
    run = _copy(synth_run[0], tmp_path)
    (run / "dataset" / ".dfkd_synth.json").write_text("\x00\x00")
    before = {p: p.read_bytes() for p in (run / "dataset" / "data").iterdir()}
    capsys.readouterr()
    assert main(["synth", "--config", str(TINY_YAML), f"output_dir={run}", *SYNTH, "seed=5"]) == 2
    assert "holds parquet shards not written by this tool with this config" in _one_line_error(capsys)
    assert {p: p.read_bytes() for p in (run / "dataset" / "data").iterdir()} == before


@pytest.mark.parametrize("name", ["diagnostics.json", "README.md"])
def test_a_damaged_dataset_card_or_diagnostics_file_is_written_again(synth_run, tmp_path, name):
    run = _copy(synth_run[0], tmp_path)
    good = (synth_run[0] / "dataset" / name).read_text()
    (run / "dataset" / name).write_text(good[: len(good) // 2])  # torn
    assert main(["synth", "--config", str(TINY_YAML), f"output_dir={run}", *SYNTH]) == 0
    assert (run / "dataset" / name).read_text() == good.replace(str(synth_run[0]), str(run))  # the card names its folder


@pytest.mark.parametrize("damage", ["flipped byte", "hash record lost"])
def test_distill_refuses_a_damaged_shard_in_one_line_even_after_a_cached_read(synth_run, tmp_path, capsys, damage):
    """The shard is read once (as a previous distill would), then damaged: distill must not train on the rows it
    read before, nor crash; it names the shard and the fix, and writes nothing."""
    from distill.data import load_synthetic

    run = _copy(synth_run[0], tmp_path)
    assert len(load_synthetic(run / "dataset", CLASSES)) == 6
    shard = run / "dataset" / "data" / "train-00001.parquet"
    flip_a_byte(shard) if damage == "flipped byte" else (shard.parent / ".train-00001.parquet.sha256").unlink()
    capsys.readouterr()
    assert main(["distill", "--config", str(TINY_YAML), f"output_dir={run}", *SYNTH, "distill.student=tiny_cnn"]) == 2
    line = _one_line_error(capsys)
    assert f"shard '{shard}' is " in line and ("damaged" if damage == "flipped byte" else "not finished") in line
    assert "run `dfkd synth` with the config that made the dataset to remake it" in line
    assert not (run / "checkpoints").exists() and not (run / "student").exists()


def test_distill_reads_the_bytes_now_in_the_folder_not_a_copy_named_by_the_folder(synth_run, tmp_path):
    """Two datasets in turn at the same path (the same folder and card name): the second one's rows are read."""
    from distill.data import load_synthetic

    first = _copy(synth_run[0], tmp_path)
    assert [r["seed"] for r in load_synthetic(first / "dataset", CLASSES)] == \
        [synth_run[1][k]["seed"] for k in sorted(synth_run[1], key=lambda k: (k[1], k[0]))]
    other = tmp_path / "other"
    assert main(["synth", "--config", str(TINY_YAML), f"output_dir={other}", *SYNTH, "seed=3"]) == 0
    shutil.rmtree(first / "dataset" / "data")
    shutil.copytree(other / "dataset" / "data", first / "dataset" / "data")
    seeds = {r["seed"] for r in load_synthetic(first / "dataset", CLASSES)}
    assert seeds == {r["seed"] for r in _rows(other / "dataset").values()}
    assert seeds.isdisjoint(r["seed"] for r in synth_run[1].values())


# ----------------------------------------------------------------------------------- student, evaluation, prompts
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from dfkd.toydata import write_domainbed, write_synthetic_dataset

    root = tmp_path_factory.mktemp("trained")
    syn = write_synthetic_dataset(root / "syn", CLASSES, per_class=4, size=32)
    toy = write_domainbed(root / "toy", CLASSES, domains=("photo",), per_class=2, size=32)
    out = root / "run"
    assert main(["distill", *_distill_args(out, syn, toy)]) == 0
    return out


def _distill_args(out: Path, syn: Path, toy: Path, *extra: str) -> list[str]:
    return ["--config", str(TINY_YAML), f"output_dir={out}", "classes=[dog,guitar,house]", f"distill.dataset={syn}",
            f"eval.data={toy}", "distill.student=tiny_cnn", "distill.max_steps=4", "distill.checkpointing_steps=2",
            "distill.batch_size=4", *extra]


def _cfg(run: Path, trained: Path, *extra: str):
    """The config of ``run`` (a copy of ``trained``), on ``trained``'s dataset and evaluation data."""
    return tiny_config(run, *_distill_args(run, trained.parent / "syn", trained.parent / "toy", *extra)[3:])


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_damaged_student_is_refused_by_eval_and_re_exported_by_distill(trained, tmp_path, capsys, name):
    from distill.stage import student_is_current

    run = _copy(trained, tmp_path)
    weights = (run / "student" / "model.safetensors").read_bytes()
    assert student_is_current(_cfg(run, trained))
    flip_a_byte(run / "student" / name, 0.5)
    assert not student_is_current(_cfg(run, trained))  # `dfkd run` trains (resumes) and exports again
    capsys.readouterr()
    assert main(["eval", *_distill_args(run, trained.parent / "syn", trained.parent / "toy")]) == 2
    line = _one_line_error(capsys)
    assert f"the student at '{run / 'student'}' is damaged ({name} differ" in line
    assert main(["distill", *_distill_args(run, trained.parent / "syn", trained.parent / "toy"),
                 "distill.resume_from_checkpoint=latest"]) == 0
    assert (run / "student" / "model.safetensors").read_bytes() == weights and student_is_current(_cfg(run, trained))


def test_a_student_without_checksums_loads_but_damaged_weights_are_one_line(trained, tmp_path):
    """A student from elsewhere (no checksum record) still loads; weights that do not parse are a UserError."""
    from distill.export import CHECKSUMS_NAME, load_student

    run = _copy(trained, tmp_path)
    (run / "student" / CHECKSUMS_NAME).unlink()
    assert load_student(run / "student").classes == CLASSES
    (run / "student" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(UserError, match="do not load into 'tiny_cnn'"):
        load_student(run / "student")


def test_the_evaluation_counts_as_done_only_for_the_same_student_data_and_settings(trained, tmp_path):
    from distill.stage import eval_is_current

    run = _copy(trained, tmp_path)
    assert eval_is_current(_cfg(run, trained))
    assert not eval_is_current(_cfg(run, trained, "eval.max_images_per_domain=1"))  # other settings: evaluate again
    assert not eval_is_current(_cfg(run, trained, "teacher.templates=openai_80"))
    assert eval_is_current(_cfg(run, trained, "eval.batch_size=3"))  # a batch size does not change the numbers
    image = trained.parent / "toy" / "photo" / "dog" / "0000.jpg"
    try:
        image.rename(image.with_name("9.jpg"))
        assert not eval_is_current(_cfg(run, trained))  # other data
    finally:
        image.with_name("9.jpg").rename(image)
    assert eval_is_current(_cfg(run, trained))
    (run / "eval.json").unlink()  # a kill between eval.md and eval.json
    assert not eval_is_current(_cfg(run, trained))
    (run / "eval.json").write_text('{"domains": [')  # torn
    assert not eval_is_current(_cfg(run, trained))


def test_the_evaluation_of_a_named_student_is_current_for_that_student_only(trained, tmp_path):
    """With eval.student set, the fingerprint is of that folder's weights (not OUTPUT_DIR/student's); the eval stage
    reports eval.md only while the evaluation is current."""
    from safetensors.torch import load_file, save_file

    from distill.stage import EvalStage, eval_is_current

    run = _copy(trained, tmp_path)
    shutil.copytree(run / "student", tmp_path / "same")
    shutil.copytree(run / "student", tmp_path / "other")
    w = load_file(str(tmp_path / "other" / "model.safetensors"))
    save_file({k: v * 2 for k, v in w.items()}, str(tmp_path / "other" / "model.safetensors"))
    assert eval_is_current(_cfg(run, trained, f"eval.student={tmp_path / 'same'}"))
    assert not eval_is_current(_cfg(run, trained, f"eval.student={tmp_path / 'other'}"))
    assert EvalStage().report(_cfg(run, trained)) == (run / "eval.md").read_text() != ""
    (run / "eval.json").unlink()  # a kill between eval.md and eval.json: the table left is not reported
    assert EvalStage().report(_cfg(run, trained)) == ""


def test_a_re_exported_student_makes_its_old_evaluation_stale(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    from distill.stage import eval_is_current

    run = _copy(trained, tmp_path)
    assert eval_is_current(_cfg(run, trained))
    w = load_file(str(run / "student" / "model.safetensors"))
    save_file({k: v + 1 for k, v in w.items()}, str(run / "student" / "model.safetensors"))
    assert not eval_is_current(_cfg(run, trained))


@pytest.fixture(scope="module")
def learned(tmp_path_factory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("learned")
    assert main(["prompts", "learn", "--config", str(TINY_YAML), f"output_dir={out}", *SYNTH[:1],
                 "prompts.contrastive.steps=4", "prompts.contrastive.num_styles=4"]) == 0
    return out, _styles(out / "prompts" / "contrastive")


def _styles(bank: Path) -> list:
    """The learned vectors (safetensors writes its metadata keys in no fixed order: compare the tensors)."""
    from safetensors.torch import load_file

    return load_file(str(bank / "styles.safetensors"))["styles"].tolist()


@pytest.mark.parametrize("damage", ["styles flipped", "meta torn"])
def test_damaged_learned_styles_are_refused_when_loaded_and_learned_again(learned, tmp_path, capsys, damage):
    from prompts.contrastive import load_style_bank

    run = _copy(learned[0], tmp_path)
    bank = run / "prompts" / "contrastive"
    if damage == "styles flipped":
        flip_a_byte(bank / "styles.safetensors", 0.9)
    else:
        (bank / "meta.json").write_text('{"fingerprint": ')
    args = ["--config", str(TINY_YAML), f"output_dir={run}", *SYNTH[:1], "prompts.contrastive.steps=4",
            "prompts.contrastive.num_styles=4"]
    with pytest.raises(UserError, match="are damaged \\(they differ from what was written\\); run `dfkd prompts learn`"):
        load_style_bank(run)
    capsys.readouterr()
    assert main(["prompts", "learn", *args]) == 0
    assert "are damaged; learning them again" in capsys.readouterr().err
    assert _styles(bank) == learned[1]


def test_a_damaged_zero_shot_head_cache_is_computed_again(tmp_path, monkeypatch):
    import torch
    from fixtures import TINY_TEACHER

    from prompts.teacher import load_teacher

    monkeypatch.setenv("DFKD_CACHE", str(tmp_path))
    first = load_teacher(TINY_TEACHER, CLASSES, "cpu").head.weights.clone()
    cached = list(tmp_path.glob("zeroshot-*.safetensors"))
    assert len(cached) == 1, "the zero-shot head was not cached where DFKD_CACHE points"
    flip_a_byte(cached[0], 0.95)  # inside the tensor data: the file still parses
    assert torch.equal(load_teacher(TINY_TEACHER, CLASSES, "cpu").head.weights, first)
    flip_a_byte(cached[0], 0.01)  # inside the header: the file no longer parses
    assert torch.equal(load_teacher(TINY_TEACHER, CLASSES, "cpu").head.weights, first)


@pytest.mark.parametrize("name", ["optimizer.bin", "random_states_0.pkl"])
def test_a_planted_pickle_in_a_checkpoint_never_runs(trained, tmp_path, capsys, name):
    """A pickle whose hash was recorded by the planter too (so the integrity check passes): Accelerate reads
    checkpoints weights-only, so the payload never runs; the resume either refuses in one line or goes on."""
    import pickle

    run = _copy(trained, tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    checkpoint = run / "checkpoints" / "checkpoint-4"
    (checkpoint / name).write_bytes(pickle.dumps(Payload()))
    from dfkd.schema import file_sha256

    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state["files"][name] = file_sha256(checkpoint / name)
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    shutil.rmtree(run / "student")
    capsys.readouterr()
    code = main(["distill", *_distill_args(run, trained.parent / "syn", trained.parent / "toy"),
                 "distill.resume_from_checkpoint=latest"])
    assert not marker.exists()
    if code == 2:
        assert f"checkpoint '{checkpoint}' does not load into this run (a file holds more than tensors and " \
            "numbers, which is never unpickled)" in _one_line_error(capsys)
    else:
        assert code == 0


def test_a_dataset_without_any_hash_records_is_read_as_it_is(synth_run, tmp_path):
    """A dataset downloaded from the Hub has no hidden records (they are not uploaded): it is hashed and read."""
    from distill.data import load_synthetic

    run = _copy(synth_run[0], tmp_path)
    for record in (run / "dataset" / "data").glob(".*.sha256"):
        record.unlink()
    assert len(load_synthetic(run / "dataset", CLASSES)) == len(synth_run[1])
