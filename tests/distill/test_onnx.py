"""`dfkd export-onnx`: the ONNX student equals the PyTorch one (onnxruntime), for any batch size, and the model
card's snippet runs as written."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from dfkd.cli import main as dfkd_main
from distill.export import load_student
from distill.trainer import train


@pytest.fixture(scope="module")
def students(tmp_path_factory, syn_dataset):
    """Two exported students: tiny_cnn (logits only) and resnet18 with the embedding head."""
    from fixtures import tiny_config

    out = {}
    for name, extra in (("cnn", ["distill.student=tiny_cnn"]), ("emb", ["distill.student=resnet18", "distill.loss.emb=1.0"])):
        cfg = tiny_config(tmp_path_factory.mktemp(name), f"distill.dataset={syn_dataset}", "distill.max_steps=1",
                          "distill.batch_size=8", *extra)
        out[name] = train(cfg).student_dir
    return out


def test_export_onnx_matches_pytorch_for_every_batch_size(students, capsys):
    import onnxruntime as ort

    folder = students["cnn"]
    assert dfkd_main(["export-onnx", str(folder)]) == 0
    printed = capsys.readouterr().out
    diff = float(re.search(r"max \|difference\| logits ([0-9.e-]+)", printed).group(1))
    assert diff <= 1e-4 and "(batch, 3, 32, 32)" in printed
    student = load_student(folder)  # the card and the checksum record were updated together: it still loads
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["pixel_values"] and [o.name for o in sess.get_outputs()] == ["logits"]
    for n in (1, 3, 17):
        x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
        got = sess.run(["logits"], {"pixel_values": student._input(x).numpy()})[0]
        with torch.no_grad():
            want = student(x).numpy()
        assert got.shape == (n, len(student.classes)) and np.abs(got - want).max() <= 1e-4


def test_the_embedding_head_is_a_second_output(students):
    import onnxruntime as ort

    folder = students["emb"]
    assert dfkd_main(["export-onnx", str(folder)]) == 0
    student = load_student(folder)
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    logits, emb = sess.run(["logits", "embedding"], {"pixel_values": student._input(x).numpy()})
    with torch.no_grad():
        assert np.abs(logits - student(x).numpy()).max() <= 1e-4
        assert np.abs(emb - student.embed(x).numpy()).max() <= 1e-4
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_the_card_snippet_runs_as_written_and_agrees_with_pytorch(students, tmp_path, monkeypatch):
    folder = students["cnn"]
    assert dfkd_main(["export-onnx", str(folder)]) == 0
    assert dfkd_main(["export-onnx", str(folder)]) == 0  # again: the card's ONNX section is replaced, not repeated
    card = (folder / "README.md").read_text()
    assert card.count("## ONNX") == 1
    snippet = card.split("## ONNX", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    from fixtures import REPO_ROOT

    assert snippet in (REPO_ROOT / "README.md").read_text()  # README shows the same snippet
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "image.jpg", quality=100)
    monkeypatch.chdir(folder)
    scope: dict = {}
    exec(compile(snippet, "model card", "exec"), scope)  # noqa: S102 - the card's own example, run as a user would
    image = torch.from_numpy(np.asarray(Image.open("image.jpg").convert("RGB"), np.float32) / 255).permute(2, 0, 1)
    student = load_student(".")
    with torch.no_grad():
        want = student(image[None]).numpy()
    assert np.abs(scope["logits"] - want).max() <= 1e-4
    assert json.loads((folder / "config.json").read_text())["label_names"][int(scope["logits"].argmax())] in student.classes


def test_export_onnx_of_a_folder_that_is_not_a_student_is_one_line(tmp_path, capsys):
    assert dfkd_main(["export-onnx", str(tmp_path / "nothing")]) == 2
    assert "no student folder" in capsys.readouterr().err
    assert dfkd_main(["export-onnx", str(tmp_path)]) == 2
    assert "no exported student" in capsys.readouterr().err
