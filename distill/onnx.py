"""ONNX export of an exported student: ``STUDENT_DIR/model.onnx``, checked against PyTorch with onnxruntime.

The graph is the student network alone, as timm and the Hub's ONNX models have it: input ``pixel_values``
``(batch, 3, S, S)`` float32, already resized to ``S`` and normalised with the student's mean and std (both in
``config.json``'s ``pretrained_cfg`` and in the model card); output ``logits`` ``(batch, C)`` over ``label_names``.
A student trained with the embedding loss has a second output, ``embedding`` ``(batch, D)``: L2-normalised, in
the teacher's image-feature space, for new class names through the teacher's text features
(:func:`distill.export.open_vocabulary_head`). The batch axis is dynamic.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfkd.errors import UserError
from dfkd.runtime import atomic_path, atomic_write
from dfkd.schema import file_sha256

from .export import CHECKSUMS_NAME, LoadedStudent, load_student

ONNX_NAME = "model.onnx"
#: the largest absolute logit difference between onnxruntime and PyTorch that counts as the same model
TOLERANCE = 1e-4
_CARD_START, _CARD_END = "<!-- dfkd:onnx -->", "<!-- /dfkd:onnx -->"


class _Graph(nn.Module):
    """What the ONNX file computes: logits, and the normalised embedding when the student has its head."""

    def __init__(self, student: LoadedStudent):
        super().__init__()
        self.net = student.net

    def forward(self, pixel_values: torch.Tensor):
        logits, emb = self.net(pixel_values)
        if emb is None:
            return logits
        return logits, nn.functional.normalize(emb, dim=-1)


def export_onnx(folder: str | Path, *, trust_code: bool | str = False, opset: int | None = None,
                check_batch: int = 5, seed: int = 0) -> dict[str, Any]:
    """Write ``folder/model.onnx`` and its section of the model card; returns the parity check
    (``max_abs_diff`` per output on a random batch of ``check_batch``, and the input spec)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise UserError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'dfkd[onnx]'") from exc
    folder = Path(folder)
    student = load_student(folder, trust_code=trust_code)
    graph = _Graph(student).eval()
    size = student.pre.input_size
    outputs = ["logits"] if student.net.head is None else ["logits", "embedding"]
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    batch = torch.export.Dim("batch", min=1, max=65536)
    with atomic_path(folder / ONNX_NAME) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes about its own internals
        torch.onnx.export(graph, (example,), str(tmp), input_names=["pixel_values"], output_names=outputs,
                          dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False,
                          opset_version=opset)
    check = parity(folder / ONNX_NAME, graph, size, check_batch, seed + 1, outputs, ort)
    spec = {"input": "pixel_values", "shape": ["batch", 3, size, size], "dtype": "float32",
            "mean": list(student.pre.mean), "std": list(student.pre.std), "outputs": outputs,
            "classes": list(student.classes)}
    _write_card(folder, spec)
    _record_checksums(folder)
    return {**check, "spec": spec, "path": str(folder / ONNX_NAME)}


def parity(path: Path, graph: nn.Module, size: int, n: int, seed: int, outputs: list[str], ort) -> dict[str, Any]:
    """Run ``path`` with onnxruntime and ``graph`` with PyTorch on one random batch of ``n`` (another batch size
    than the export's); a difference above :data:`TOLERANCE` is an error."""
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = graph(x)
    ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(outputs, {"pixel_values": x.numpy()})
    diffs = {name: float(abs(torch.from_numpy(g) - r).max()) for name, g, r in zip(outputs, got, ref)}
    if any(d > TOLERANCE for d in diffs.values()):
        path.unlink(missing_ok=True)
        raise UserError(f"the ONNX student differs from PyTorch by up to {max(diffs.values()):.2g} (> {TOLERANCE}); "
                        "not kept. Try another opset (--opset) or report it with the student's name")
    return {"batch": n, "max_abs_diff": diffs}


def card_section(spec: dict[str, Any]) -> str:
    """The model card's ONNX section: the input spec and a runnable onnxruntime snippet."""
    size = spec["shape"][-1]
    mean = ", ".join(f"{v:.4g}" for v in spec["mean"])
    std = ", ".join(f"{v:.4g}" for v in spec["std"])
    extra = (", and `embedding` (batch, D), L2-normalised, in the teacher's image-feature space"
             if "embedding" in spec["outputs"] else "")
    return f"""{_CARD_START}
## ONNX

`model.onnx` (written by `dfkd export-onnx`, checked against PyTorch with onnxruntime): input `pixel_values`
float32 (batch, 3, {size}, {size}), RGB in [0, 1] resized to {size} px (centre crop), then normalised with mean
({mean}) and std ({std}); outputs `logits` (batch, {len(spec['classes'])}) over `label_names` in `config.json`{extra}.
The batch axis is dynamic.

```python
import json, numpy as np, onnxruntime as ort
from PIL import Image

cfg = json.load(open("config.json"))
pre = cfg["pretrained_cfg"]
mean, std = (np.array(pre[k], np.float32).reshape(3, 1, 1) for k in ("mean", "std"))
image = Image.open("image.jpg").convert("RGB").resize(tuple(pre["input_size"][1:]))
x = ((np.asarray(image, np.float32).transpose(2, 0, 1) / 255 - mean) / std)[None]
logits = ort.InferenceSession("model.onnx").run(["logits"], {{"pixel_values": x}})[0]
print(cfg["label_names"][int(logits.argmax())])
```
{_CARD_END}
"""


def _write_card(folder: Path, spec: dict[str, Any]) -> None:
    card = folder / "README.md"
    text = card.read_text() if card.is_file() else ""
    if _CARD_START in text and _CARD_END in text:  # exported again: replace the section
        head, _, rest = text.partition(_CARD_START)
        text = head + rest.partition(_CARD_END)[2].lstrip("\n")
    atomic_write(card, text.rstrip("\n") + "\n\n" + card_section(spec))


def _record_checksums(folder: Path) -> None:
    """Add ``model.onnx`` and the new card to the export's sha256 record, so ``load_student`` still trusts it."""
    record = folder / CHECKSUMS_NAME
    if not record.is_file():
        return  # an export without a record (older, or from the Hub) stays without one
    sums = json.loads(record.read_text())
    for name in (ONNX_NAME, "README.md"):
        sums[name] = file_sha256(folder / name)
    atomic_write(record, json.dumps(dict(sorted(sums.items())), indent=1))
