"""Writer, plan and diagnostics on their own (no model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synth.diagnostics import mean_pairwise_cosine_distance, vendi_score
from synth.plan import plan_shards
from synth.writer import DatasetWriter, done_shards, encode_image, remove_stale, to_uint8


def test_plan_is_index_major_and_grows_by_appending():
    small, big = plan_shards(3, 2, 4), plan_shards(3, 4, 4)
    assert [k for s in small for k in s.keys] == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
    assert small[0] == big[0] and small[1].tag() != big[1].tag()  # the partial last shard changes
    assert [len(b) for b in big[0].batches(3)] == [3, 1]


def test_to_uint8_resizes_and_rounds():
    x = torch.rand(2, 3, 20, 20)
    a = to_uint8(x, 10)
    assert a.shape == (2, 10, 10, 3) and a.dtype == np.uint8
    assert np.array_equal(to_uint8(x, 20), (x * 255).round().byte().permute(0, 2, 3, 1).numpy())


def test_encoding_is_deterministic():
    a = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    assert encode_image(a, "jpeg", 90) == encode_image(a, "jpeg", 90)
    assert encode_image(a, "png", 90)[:4] == b"\x89PNG"


def _rows(spec, writer):
    futures = writer.encode(np.zeros((len(spec.keys), 8, 8, 3), np.uint8))
    return [{"image": f, "label": lab, "index": i, "class_name": "a", "prompt": "p", "method": "plain", "style": "{}",
             "seed": 1, "generator": "g", "teacher_confidence": 0.5} for f, (lab, i) in zip(futures, spec.keys)]


def test_writer_commits_whole_shards_and_resume_sees_them(tmp_path):
    import datasets

    specs = plan_shards(2, 3, 4)
    with DatasetWriter(tmp_path, ["a", "b"], store_resolution=8) as w:
        w.write_shard(specs[0], _rows(specs[0], w), {"dropped": 0})
    assert done_shards(tmp_path / "data", specs) == {0}
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["train-00000.parquet"]
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "data" / "*.parquet"), split="train")
    assert ds.features["label"].names == ["a", "b"] and len(ds) == 4
    # a shard planned with other keys (the plan grew) is not "done"
    assert done_shards(tmp_path / "data", plan_shards(2, 3, 3)) == set()
    (tmp_path / "data" / ".tmp-9-train-00001.parquet").write_bytes(b"x")
    (tmp_path / "data" / "train-00007.parquet").write_bytes(b"x")
    assert remove_stale(tmp_path / "data", specs) == [".tmp-9-train-00001.parquet", "train-00007.parquet"]


def test_diversity_scores():
    same = torch.nn.functional.normalize(torch.ones(5, 4), dim=-1)
    ortho = torch.eye(4)
    assert vendi_score(same) == pytest.approx(1.0, abs=1e-6)
    assert vendi_score(ortho) == pytest.approx(4.0, abs=1e-6)
    assert mean_pairwise_cosine_distance(same) == pytest.approx(0.0, abs=1e-6)
    assert mean_pairwise_cosine_distance(ortho) == pytest.approx(1.0, abs=1e-6)
