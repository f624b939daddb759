"""``dfkd synth`` end to end on the tiny models: the dataset contract, resume, bad input, filtering."""

from __future__ import annotations

import json

import pytest
import torch
from synth_helpers import CLIP_GUIDED, fast_args, fast_config, read_rows

from dfkd.cli import main
from dfkd.errors import UserError


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished fast run (3 classes x 2 images, mix prompts, tiny SD)."""
    out = tmp_path_factory.mktemp("run")
    assert main(fast_args(out)) == 0
    return out


def test_dataset_loads_with_the_contract(finished):
    import datasets

    from dfkd import schema

    ds = datasets.load_dataset(str(finished / "dataset"), split="train")
    assert len(ds) == 3 * 2
    assert list(ds.features) == list(schema.COLUMNS)
    assert ds.features["label"].names == ["dog", "guitar", "house"]
    assert len({(r["label"], r["index"]) for r in ds}) == 6
    row = ds[0]
    assert row["image"].size == (32, 32) and row["image"].format == "JPEG"
    assert row["class_name"] == ds.features["label"].names[row["label"]]
    assert row["generator"] == "diffusion:tiny:sd" and row["method"] == "mix"
    assert "<style:" in row["prompt"] and "words" in json.loads(row["style"])
    assert all(0.0 <= c <= 1.0 for c in ds["teacher_confidence"])


def test_teacher_confidence_is_the_teachers_probability_of_the_rows_own_label(tmp_path):
    """Each row's teacher_confidence is the softmax probability of that row's label under the CLIP zero-shot
    classifier computed by hand (transformers only) on the stored pixels (PNG: stored == scored)."""
    import io

    import numpy as np
    from fixtures import clip_zero_shot_by_hand
    from PIL import Image

    from prompts.templates import load_templates

    assert main(fast_args(tmp_path, "synth.image_format=png")) == 0
    cfg = fast_config(tmp_path)
    rows = read_rows(tmp_path / "dataset")
    keys = sorted(rows)
    arrays = [np.asarray(Image.open(io.BytesIO(rows[k]["image"]["bytes"])).convert("RGB")) for k in keys]
    logits, _ = clip_zero_shot_by_hand(arrays, cfg.classes, load_templates(cfg.teacher.templates))
    probs = logits.softmax(-1)
    labels = [rows[k]["label"] for k in keys]
    assert labels == [k[0] for k in keys] and sorted(set(labels)) == [0, 1, 2]
    own = probs[range(len(keys)), labels]
    confidence = np.array([rows[k]["teacher_confidence"] for k in keys])
    assert np.abs(confidence - own.numpy()).max() < 1e-4, (confidence, own)
    others = probs.masked_fill(torch.nn.functional.one_hot(torch.tensor(labels), 3).bool(), float("inf"))
    assert (others - own[:, None]).abs().min() > 1e-3  # another class's probability would not pass


def test_card_diagnostics_and_preview(finished):
    from PIL import Image

    d = finished / "dataset"
    card = (d / "README.md").read_text()
    assert card.startswith("---\n") and "data/*.parquet" in card and "class_label" in card and "config_name: dfkd-" in card
    assert "teacher agreement" in card and "Vendi" in card and "seed: 0" in card  # resolved config inside
    assert "> **Note:** tiny:clip, tiny:sd have random weights" in card  # its numbers and images mean nothing
    diag = json.loads((d / "diagnostics.json").read_text())
    assert diag["rows"] == 6 and 0 <= diag["teacher_agreement"] <= 1
    for v in diag["per_class"].values():
        assert v["count"] == 2 and 1 - 1e-6 <= v["vendi_score"] <= 2 + 1e-6
        assert 0 <= v["mean_pairwise_cosine_distance"] <= 2
    width, height = Image.open(d / "preview.png").size
    assert height == 3 * 32 and width > 2 * 32  # a row per class, named in a strip on the left


def test_rerun_skips_everything_and_changes_nothing(finished, capsys):
    before = {p.name: p.read_bytes() for p in (finished / "dataset" / "data").iterdir()}
    assert main(fast_args(finished)) == 0
    assert "generated 0 images" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (finished / "dataset" / "data").iterdir()} == before


def test_missing_shard_is_regenerated_identically(finished, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    data = copy / "dataset" / "data"
    victim = min(data.glob("*.parquet"))
    victim.unlink()
    (data / ".tmp-123-train-00000.parquet").write_bytes(b"half a shard")  # a killed run's leftover
    assert main(fast_args(copy)) == 0
    assert not list(data.glob(".tmp-*"))
    assert read_rows(copy / "dataset") == read_rows(finished / "dataset")


def test_growing_images_per_class_keeps_finished_shards(finished, tmp_path):
    import shutil

    copy = tmp_path / "grow"
    shutil.copytree(finished, copy)
    first = (copy / "dataset" / "data" / "train-00000.parquet").read_bytes()
    assert main(fast_args(copy, "synth.images_per_class=3")) == 0
    rows = read_rows(copy / "dataset")
    assert sorted(rows) == [(label, i) for label in range(3) for i in range(3)]
    assert (copy / "dataset" / "data" / "train-00000.parquet").read_bytes() == first


def _bad(capsys, out, *overrides):
    code = main(fast_args(out, *overrides))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("override, message", [
    ("synth.backend=gan", "unknown backend 'gan' (synth.backend)"),
    ("synth.model=nobody/no-such-model", "cannot load diffusion pipeline 'nobody/no-such-model'"),
    ("synth.images_per_class=0", "images_per_class"),
    ("synth.resolution=36", "synth.resolution=36 cannot be produced"),
    ("synth.backend=clip_guided synth.clip_guided.parameterization=fourir",
     "unknown parameterization 'fourir' (synth.clip_guided.parameterization); did you mean 'fourier'?"),
])
def test_bad_input_exits_2_with_one_line_before_any_image(tmp_path, capsys, override, message):
    code, err = _bad(capsys, tmp_path, *override.split())
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not list(tmp_path.rglob("*.parquet"))


def test_folder_from_another_config_is_refused_then_overwritten(finished, tmp_path, capsys):
    import shutil

    copy = tmp_path / "other"
    shutil.copytree(finished, copy)
    before = read_rows(copy / "dataset")
    code, err = _bad(capsys, copy, "seed=1")
    assert code == 2 and len(err.splitlines()) == 1 and "seed" in err and "synth.overwrite=true" in err
    assert read_rows(copy / "dataset") == before
    assert main(fast_args(copy, "seed=1", "synth.overwrite=true")) == 0
    after = read_rows(copy / "dataset")
    assert sorted(after) == sorted(before) and after[(0, 0)]["seed"] != before[(0, 0)]["seed"]


def test_filter_drop_and_regenerate(tmp_path):
    from synth.run import retry_seed

    assert main(fast_args(tmp_path / "drop", "synth.filter.enabled=true", "synth.filter.threshold=0.999",
                          "synth.filter.mode=drop")) == 0
    assert read_rows(tmp_path / "drop" / "dataset") == {}  # a random tiny teacher is never that sure
    card = (tmp_path / "drop" / "dataset" / "README.md").read_text()
    assert "6 dropped" in card
    from synth.writer import shard_info

    infos = [shard_info(p) for p in sorted((tmp_path / "drop" / "dataset" / "data").glob("*.parquet"))]
    assert infos and all(list(i) == ["generated", "regenerated", "dropped", "below_threshold"] for i in infos)
    assert [sum(i[k] for i in infos) for k in ("generated", "regenerated", "dropped", "below_threshold")] == [6, 0, 6, 6]
    assert main(fast_args(tmp_path / "regen", "synth.filter.enabled=true", "synth.filter.threshold=0.999",
                          "synth.filter.max_tries=1")) == 0
    rows = read_rows(tmp_path / "regen" / "dataset")
    assert len(rows) == 6
    assert "6 regenerated" in (tmp_path / "regen" / "dataset" / "README.md").read_text()
    from prompts.methods import image_seed

    assert all(r["seed"] == retry_seed(image_seed(0, r["label"], r["index"]), 1) for r in rows.values())


def test_clip_guided_end_to_end_png(tmp_path):
    import datasets

    assert main(fast_args(tmp_path, *CLIP_GUIDED, "synth.image_format=png", "synth.store_resolution=16")) == 0
    ds = datasets.load_dataset(str(tmp_path / "dataset"), split="train")
    assert len(ds) == 6 and ds[0]["image"].size == (16, 16) and ds[0]["image"].format == "PNG"
    assert ds[0]["generator"] == "clip_guided:tiny:vqgan"


def test_two_dataset_folders_never_share_the_datasets_cache(finished, tmp_path):
    """``datasets`` keys its cache of a local folder on the folder name and card metadata only."""
    import shutil

    import datasets

    other = tmp_path / "second"
    shutil.copytree(finished, other)
    assert main(fast_args(other, "synth.images_per_class=3")) == 0
    a = datasets.load_dataset(str(finished / "dataset"), split="train")
    b = datasets.load_dataset(str(other / "dataset"), split="train")
    assert (len(a), len(b)) == (6, 9)


def test_a_run_that_failed_before_any_image_does_not_lock_the_folder(tmp_path, capsys):
    code, _ = _bad(capsys, tmp_path, "synth.model=nobody/no-such-model")
    assert code == 2
    assert main(fast_args(tmp_path, "synth.images_per_class=1")) == 0
    assert len(read_rows(tmp_path / "dataset")) == 3


def test_an_unknown_parameterization_fails_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import synth.run
    from synth.stage import SynthStage

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded before the backend's settings were checked")

    monkeypatch.setattr(synth.run, "load_teacher", no_teacher)
    code, err = _bad(capsys, tmp_path, "synth.backend=clip_guided", "synth.clip_guided.parameterization=fourir")
    assert code == 2 and "did you mean 'fourier'?" in err
    cfg = fast_config(tmp_path, "synth.backend=clip_guided", "synth.clip_guided.parameterization=fourir")
    with pytest.raises(UserError, match="unknown parameterization 'fourir'"):
        SynthStage().preflight(cfg)


def test_stage_preflight_refuses_another_configs_dataset_unless_overwrite_and_writes_nothing(finished, tmp_path):
    """``dfkd run``'s synth preflight reads the folder's state and never writes it: a dataset of another config is
    refused, ``synth.overwrite=true`` lets it through (synthesis will start over), the state file is untouched,
    and a new folder stays empty."""
    from synth.plan import STATE_NAME
    from synth.stage import SynthStage

    state = finished / "dataset" / STATE_NAME
    before = state.read_bytes()
    with pytest.raises(UserError, match="different config"):
        SynthStage().preflight(fast_config(finished, "seed=1"))
    SynthStage().preflight(fast_config(finished, "seed=1", "synth.overwrite=true"))
    assert state.read_bytes() == before
    SynthStage().preflight(fast_config(tmp_path / "new"))
    assert not (tmp_path / "new" / "dataset" / STATE_NAME).exists()


def test_synth_with_a_method_that_needs_learning_learns_it_first_and_says_so(tmp_path, capsys):
    """The README's `dfkd synth` line once stopped with "no learned Contrastive-Prompt styles"; it now learns them
    first, as `dfkd run` does, and a second run finds them learned."""
    args = fast_args(tmp_path, "prompts.method=contrastive", "prompts.contrastive.steps=2",
                     "prompts.contrastive.num_styles=2", "prompts.contrastive.class_batch=3")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "dfkd synth: prompts.method=contrastive learns its styles first" in out
    assert (tmp_path / "prompts" / "contrastive" / "meta.json").is_file()
    assert {r["method"] for r in read_rows(tmp_path / "dataset").values()} == {"contrastive"}
    assert main(args) == 0
    assert "learns its styles first" not in capsys.readouterr().out
