"""``dfkd prompts learn|show`` on the tiny config, in-process through the real command line."""

from __future__ import annotations

import json

from fixtures import TINY_YAML

from dfkd.cli import main


def dfkd(*args: str) -> int:
    return main(["prompts", *args[:1], "--config", str(TINY_YAML), *args[1:]])


def test_learn_then_show_contrastive(tmp_path, capsys):
    out = tmp_path / "run"
    assert dfkd("learn", f"output_dir={out}") == 0
    folder = out / "prompts" / "contrastive"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["encoder"]["model_id"] == "tiny:sd" and meta["num_styles"] == 16 and meta["seed"] == 0
    assert len(meta["losses"]) == 30 and len(meta["dictionary"]["words"]) >= 80
    assert (folder / "styles.safetensors").is_file() and not (folder / "checkpoint.pt").exists()
    assert (out / "config.yaml").is_file()
    capsys.readouterr()

    assert dfkd("learn", f"output_dir={out}") == 0  # finished: skipped
    assert "already learned" in capsys.readouterr().out

    assert dfkd("show", f"output_dir={out}", "prompts.method=contrastive", "--samples", "2") == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "prompts" / "show-contrastive.json").read_text())
    assert set(report["samples"]) == {"dog", "elephant", "giraffe", "guitar", "horse", "house", "person"}
    assert all(len(s) == 2 for s in report["samples"].values())
    assert 0 < report["diversity"] <= 2 and 0 <= report["class_consistency"] <= 1
    # the show report measures the same styles the learner measured at the end
    assert abs(report["diversity"] - meta["diagnostics"]["learned"]["diversity"]) < 1e-4
    words = set(meta["dictionary"]["words"])
    assert all(len(s["nearest_words"]) == 3 and set(s["nearest_words"]) <= words
               for samples in report["samples"].values() for s in samples)
    assert "a <style:contrastive-" in printed and "diversity" in printed and "class consistency" in printed


def test_show_other_methods_without_learning(tmp_path, capsys):
    out = tmp_path / "run"
    for method in ("plain", "handcrafted", "mix", "random"):
        assert dfkd("show", f"output_dir={out}", f"prompts.method={method}", "--samples", "1") == 0
        report = json.loads((out / "prompts" / f"show-{method}.json").read_text())
        assert report["method"] == method
    plain = json.loads((out / "prompts" / "show-plain.json").read_text())
    assert plain["diversity"] < 1e-5  # one implicit style
    assert all("nearest_words" not in s for samples in plain["samples"].values() for s in samples)


def test_unknown_method_exits_2_before_loading_any_model(tmp_path, capsys):
    # a model that cannot load: the method name must be rejected first
    for cmd in ("show", "learn"):
        code = dfkd(cmd, f"output_dir={tmp_path}", "prompts.method=nope", "synth.model=/no/such/model")
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "unknown prompt method 'nope'" in err
        assert all(m in err for m in ("plain", "handcrafted", "mix", "random", "contrastive"))


def test_show_contrastive_without_learning_names_the_command(tmp_path, capsys):
    code = dfkd("show", f"output_dir={tmp_path}", "prompts.method=contrastive", "synth.model=/no/such/model")
    assert code == 2 and "dfkd prompts learn" in capsys.readouterr().err
