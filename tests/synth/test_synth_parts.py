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

    from dfkd.schema import file_sha256

    specs = plan_shards(2, 3, 4, "fp-a")
    with DatasetWriter(tmp_path, ["a", "b"], store_resolution=8) as w:
        w.write_shard(specs[0], _rows(specs[0], w), {"dropped": 0})
    data = tmp_path / "data"
    assert done_shards(data, specs) == {0}
    assert sorted(p.name for p in data.iterdir()) == [".train-00000.parquet.sha256", "train-00000.parquet"]
    assert (data / ".train-00000.parquet.sha256").read_text().strip() == file_sha256(data / "train-00000.parquet")
    ds = datasets.load_dataset("parquet", data_files=str(data / "*.parquet"), split="train")
    assert ds.features["label"].names == ["a", "b"] and len(ds) == 4
    # a shard planned with other keys (the plan grew), or under another config's fingerprint, is not "done"
    assert done_shards(data, plan_shards(2, 3, 3, "fp-a")) == set()
    assert done_shards(data, plan_shards(2, 3, 4, "fp-b")) == set()
    (data / ".tmp-9-train-00001.parquet").write_bytes(b"x")
    (data / "..train-00001.parquet.sha256.9.tmp").write_bytes(b"x")
    (data / "train-00007.parquet").write_bytes(b"x")
    (data / ".train-00007.parquet.sha256").write_text("0" * 64)
    assert remove_stale(data, specs) == ["..train-00001.parquet.sha256.9.tmp", ".tmp-9-train-00001.parquet",
                                         ".train-00007.parquet.sha256", "train-00007.parquet"]
    assert sorted(p.name for p in data.iterdir()) == [".train-00000.parquet.sha256", "train-00000.parquet"]


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "no record", "torn record"])
def test_a_shard_whose_bytes_differ_from_its_commit_record_is_not_done(tmp_path, damage):
    """A shard counts as done only when its bytes hash to what was recorded at its commit: data pages corrupted
    under an intact footer, a truncated file, a kill between the shard and its record, a torn record."""
    specs = plan_shards(2, 3, 4, "fp")
    with DatasetWriter(tmp_path, ["a", "b"], store_resolution=8) as w:
        w.write_shard(specs[0], _rows(specs[0], w))
    shard, record = tmp_path / "data" / "train-00000.parquet", tmp_path / "data" / ".train-00000.parquet.sha256"
    raw = shard.read_bytes()
    if damage == "flip a byte":
        mid = len(raw) // 3  # inside the data pages: the footer (schema, tag) still reads
        shard.write_bytes(raw[:mid] + bytes([raw[mid] ^ 0xFF]) + raw[mid + 1:])
    elif damage == "truncate":
        shard.write_bytes(raw[: len(raw) // 2])
    elif damage == "no record":
        record.unlink()
    else:
        record.write_text(record.read_text()[:10])
    found: list[str] = []
    assert done_shards(tmp_path / "data", specs, found) == set()
    assert found == ([] if damage == "no record" else ["train-00000.parquet"])


def test_diversity_scores():
    same = torch.nn.functional.normalize(torch.ones(5, 4), dim=-1)
    ortho = torch.eye(4)
    assert vendi_score(same) == pytest.approx(1.0, abs=1e-6)
    assert vendi_score(ortho) == pytest.approx(4.0, abs=1e-6)
    assert mean_pairwise_cosine_distance(same) == pytest.approx(0.0, abs=1e-6)
    assert mean_pairwise_cosine_distance(ortho) == pytest.approx(1.0, abs=1e-6)


def test_preview_grid_names_each_row_and_has_no_blank_columns_past_the_last_image():
    from PIL import Image

    from synth.diagnostics import preview_grid

    rng = np.random.default_rng(0)
    images = {(r, k): rng.integers(0, 255, (20, 20, 3), dtype=np.uint8) for r in range(3) for k in range(2)}
    grid = preview_grid(images, rows=3, cols=8, size=20, labels=["dog", "elephant", "guitar"])
    strip = grid.shape[1] - 2 * 20
    assert grid.shape[0] == 3 * 20 and strip > 8  # 2 columns for 2 images per class, not 8
    for (r, k), a in images.items():
        assert np.array_equal(grid[r * 20:(r + 1) * 20, strip + k * 20:strip + (k + 1) * 20], a)  # same size: as is
    for r in range(3):
        assert (grid[r * 20:(r + 1) * 20, :strip] < 128).any()  # the class name is written in its row
    plain = preview_grid(images, rows=3, cols=8, size=20)
    assert plain.shape == (60, 40, 3) and np.array_equal(plain, grid[:, strip:])
    assert Image.fromarray(grid).size == (strip + 40, 60)
