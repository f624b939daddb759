"""bench/fullsize.py's runner on the tiny models (the real-size models take minutes and 17 GB; see BENCHMARKS.md)."""

from __future__ import annotations

import argparse

import pytest


def test_the_runner_times_every_stage_of_a_real_dfkd_run(tmp_path, _tiny_cache):
    from bench.fullsize import STAGES, run_one
    from dfkd.models import resolve_model_id

    args = argparse.Namespace(images_per_class=2, learn_steps=2, distill_steps=2, device="cpu", dtype="fp32",
                              verbose=False, resolution=32, student="tiny_cnn", input_size=32)
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "left-over").write_text("from an earlier run")
    r = run_one("sd", resolve_model_id("tiny:sd"), resolve_model_id("tiny:clip"), tmp_path, args)
    assert set(r["seconds"]) == {"load", *STAGES}
    assert all(s >= 0 for s in r["seconds"].values()) and r["seconds"]["synth"] > 0
    assert r["images"] == 4 and r["distill_steps"] == 2 and r["gen_seconds"] > 0  # 2 classes x 2 images
    assert max(r["peak"].values()) > 100 * 2**20  # a python process with torch: over 100 MB, sampled
    assert (tmp_path / "sd" / "eval.md").is_file() and (tmp_path / "sd.log").is_file()
    # every run starts over in an empty folder (a finished stage would otherwise be skipped and time nothing)
    assert not (tmp_path / "sd" / "left-over").exists()


def test_unknown_generators_are_named_with_the_valid_ones(capsys):
    from bench.fullsize import main

    with pytest.raises(SystemExit) as exit_:
        main(["--models", "sd-turbo,flux-dev"])
    assert exit_.value.code == 2 and "unknown generator(s) ['flux-dev']; valid: sd-turbo, sdxl-turbo" in capsys.readouterr().err
