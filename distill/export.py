"""The exported student: ``OUT/student/{model.safetensors, config.json, README.md}``, a loader and Hub upload.

``config.json`` follows timm's Hub format (``architecture``, ``num_classes``, ``label_names``,
``pretrained_cfg`` with ``input_size``/``mean``/``std``, ``model_args``) plus a ``dfkd`` block, so a timm
student also loads with ``timm.create_model("hf-hub:user/name", pretrained=True)``. Any student loads with::

    from distill import load_student
    student = load_student("runs/tiny/student")   # (B, 3, H, W) floats in [0, 1] -> (B, C) logits
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfkd.errors import UserError
from dfkd.models import random_weights_note
from dfkd.runtime import atomic_folder
from dfkd.schema import file_sha256

from .augment import normalize, resize_center_crop
from .config import DistillExperiment
from .students import DistillStudent, Preprocessing, create_student

STUDENT_DIR = "student"  #: the exported student's folder in OUTPUT_DIR
WEIGHTS_NAME = "model.safetensors"
HEAD_NAME = "emb_head.safetensors"
CHECKSUMS_NAME = ".dfkd_sha256.json"  #: sha256 of every other file of the export, written last


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def student_meta(cfg: DistillExperiment, kind: str, pre: Preprocessing, **facts: Any) -> dict[str, Any]:
    """The ``dfkd`` block of an exported student's ``config.json``: what it is, what it imitates, how it was
    trained; ``facts`` adds the rest (steps, images, the dataset's provenance, ...)."""
    d = cfg.distill
    return {"name": cfg.name or "dfkd", "student": d.student, "kind": kind, "student_kwargs": d.student_kwargs,
            "classes": list(cfg.classes), "preprocessing": pre.to_dict(), "teacher": cfg.teacher.model,
            "templates": cfg.teacher.templates, "loss": vars(d.loss).copy(), **facts}


def dataset_provenance(dataset) -> dict[str, str]:
    """How a synthetic dataset was made, read from its own rows (``method``, ``generator`` = backend:model)."""
    methods = sorted(dataset.unique("method"))
    generators = sorted(dataset.unique("generator"))
    backends = sorted({g.partition(":")[0] for g in generators})
    models = sorted({g.partition(":")[2] for g in generators})
    return {"prompt_method": ", ".join(methods), "synth_backend": ", ".join(backends), "synth_model": ", ".join(models)}


def export_student(model: DistillStudent, folder: str | Path, meta: dict[str, Any],
                   metrics: dict[str, Any] | None = None) -> None:
    """Write weights, ``config.json`` (with ``meta``, see :func:`student_meta`) and model card of
    ``model.student`` (and its embedding head) into ``folder``, atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    meta = {**meta, "embedding_dim": model.head.out_features if model.head is not None else None}
    kind, classes, kwargs = meta["kind"], list(meta["classes"]), meta["student_kwargs"]
    pre = meta["preprocessing"]
    with atomic_folder(folder) as tmp:  # the folder holds a whole export, or the previous one, never a mix
        student = model.student
        if kind == "timm":
            from timm.models import save_for_hf

            data_config = {"input_size": (3, pre["input_size"], pre["input_size"]), "mean": tuple(pre["mean"]),
                           "std": tuple(pre["std"])}
            save_for_hf(student, str(tmp), model_config={"label_names": classes, "dfkd": meta},
                        model_args=dict(kwargs) or None, safe_serialization=True, data_config=data_config)
        else:
            save_file(_state(student), str(tmp / WEIGHTS_NAME))
            config = {"architecture": meta["student"], "num_classes": len(classes), "label_names": classes,
                      "model_args": kwargs,
                      "pretrained_cfg": {"input_size": [3, pre["input_size"], pre["input_size"]],
                                         "mean": list(pre["mean"]), "std": list(pre["std"])},
                      "dfkd": meta}
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if model.head is not None:
            save_file(_state(model.head), str(tmp / HEAD_NAME))
        (tmp / "README.md").write_text(model_card(meta, metrics))
        sums = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / CHECKSUMS_NAME).write_text(json.dumps(sums, indent=1))


def damaged_files(folder: str | Path) -> list[str] | None:
    """Files of an exported student whose bytes differ from the sha256 recorded at export (missing ones included);
    None when the folder has no record (exported by an older version, or downloaded from the Hub)."""
    folder = Path(folder)
    try:
        sums = json.loads((folder / CHECKSUMS_NAME).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return [CHECKSUMS_NAME]
    if not isinstance(sums, dict):
        return [CHECKSUMS_NAME]
    return [n for n, sha in sums.items() if not (folder / n).is_file() or file_sha256(folder / n) != sha]


def model_card(meta: dict[str, Any], metrics: dict[str, Any] | None) -> str:
    """A Hub model card: front matter, how it was made, the metrics table and the one-line loader."""
    from .evaluate import markdown_table

    timm_tag = "library_name: timm\n" if meta["kind"] == "timm" else ""
    loss = meta["loss"]
    table = markdown_table(metrics) if metrics else "Not evaluated on real data (`eval.data` was not set).\n"
    name = meta.get("name", "dfkd")
    return f"""---
{timm_tag}pipeline_tag: image-classification
tags: [image-classification, knowledge-distillation, data-free, clip, dfkd]
---

# {name}: `{meta['student']}` distilled from `{meta['teacher']}` without real data

A data-free knowledge-distillation student: trained only on synthetic images generated from the class
names with prompt diversification (`{meta['prompt_method']}` prompts, `{meta['synth_backend']}` backend
`{meta['synth_model']}`), imitating the CLIP teacher's zero-shot classifier.

| | |
|---|---|
| teacher | `{meta['teacher']}` (zero-shot head over the `{meta['templates']}` templates) |
| student | `{meta['student']}` ({meta['kind']}), input {meta['preprocessing']['input_size']} px |
| classes | {', '.join(meta['classes'])} |
| training data | {meta.get('images', '?')} synthetic images (`{meta['dataset']}`) |
| losses | KD {loss['kd']} (τ = {loss['temperature']}), CE {loss['ce']}, embedding {loss['emb']} |
| steps | {meta.get('steps', '?')} |

## Evaluation (top-1 %, per domain)

{table}{_note_line(meta)}
## Usage

```python
from distill import load_student

{_load_line(meta)}
probs = student(images).softmax(-1)             # classes: student.classes
```
"""


def _note_line(meta: dict[str, Any]) -> str:
    note = random_weights_note(meta["teacher"], meta.get("synth_model"))
    return f"\n> **Note:** {note}.\n" if note else ""


def _load_line(meta: dict[str, Any]) -> str:
    """The card's loading line: a ``module:attr`` student runs its own code, so it loads only when trusted."""
    name = meta["student"]
    if meta["kind"] == "import" and ":" in name:
        module = name.partition(":")[0]
        return (f"# `{name}` is your own code: `{module}` must be importable (run from its folder or put that\n"
                f"# folder on PYTHONPATH), and it runs only when you trust it\n"
                f'student = load_student("path/to/this/folder", trust_code="{name}")')
    return 'student = load_student("path/to/this/folder")  # (B, 3, H, W) floats in [0, 1] -> (B, C) logits'


class LoadedStudent(nn.Module):
    """An exported student with its preprocessing: ``(B, 3, H, W)`` floats in [0, 1] -> ``(B, C)`` logits.

    A student trained with the embedding loss also has :meth:`embed`, ``h(f_S(x))`` in the teacher's
    feature space, so it classifies *new* class names through the teacher's text features
    (:func:`open_vocabulary_head`).
    """

    def __init__(self, model: nn.Module, classes: list[str], pre: Preprocessing, config: dict[str, Any],
                 head: nn.Linear | None = None):
        super().__init__()
        self.model, self.classes, self.pre, self.config = model.eval(), classes, pre, config
        self.net = DistillStudent(model, len(classes), head.out_features if head is not None else None)
        if head is not None:
            self.net.head.load_state_dict(head.state_dict())
        self.net.eval()
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pre.std).view(1, 3, 1, 1), persistent=False)

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(resize_center_crop(images, self.pre.input_size), self.mean, self.std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self._input(images))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, D)`` L2-normalised embeddings in the teacher's image-feature space."""
        if self.net.head is None:
            raise UserError("this student was trained without the embedding loss (distill.loss.emb=0); "
                            "it cannot classify new class names")
        return nn.functional.normalize(self.net(self._input(images))[1], dim=-1)


def open_vocabulary_head(student: LoadedStudent, class_names: list[str], templates: str | None = None):
    """A zero-shot head ``(B, D) -> (B, K)`` over new ``class_names`` from the teacher's text features:
    ``head(student.embed(images))`` are logits for those names."""
    from prompts.config import TeacherConfig
    from prompts.teacher import load_teacher

    meta = student.config.get("dfkd", {})
    section = TeacherConfig(model=meta["teacher"], templates=templates or meta.get("templates", "openai_80"))
    return load_teacher(section, class_names, student.mean.device).head


def load_student(path: str | Path, device: str | torch.device = "cpu", trust_code: bool | str = False) -> LoadedStudent:
    """Load a student exported by ``dfkd distill`` (folder with ``config.json`` and ``model.safetensors``).

    timm and registered students are built from the folder alone. A ``module:attr`` student is built by importing
    and calling the code its ``config.json`` names, so that happens only when the caller trusts it:
    ``trust_code=True``, or ``trust_code="module:attr"`` for exactly that factory.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .students import STUDENTS

    path = Path(path)
    if not (path / "config.json").is_file() or not (path / WEIGHTS_NAME).is_file():
        raise UserError(f"no exported student at '{path}' (config.json + {WEIGHTS_NAME}); run `dfkd distill` first "
                        "or set eval.student")
    damaged = damaged_files(path)
    if damaged:
        raise UserError(f"the student at '{path}' is damaged ({', '.join(damaged[:3])} differ from what was exported); "
                        "export it again: `dfkd distill` with its config resumes from the last checkpoint")
    try:
        config = json.loads((path / "config.json").read_text())
        meta = config.get("dfkd", {})
    except (ValueError, AttributeError) as exc:
        raise UserError(f"the student at '{path}' has an unreadable config.json ({type(exc).__name__}); export it "
                        "again with `dfkd distill`") from exc
    classes = list(config.get("label_names") or meta.get("classes"))
    name = meta.get("student", config["architecture"])
    if ":" in name and name not in STUDENTS and trust_code not in (True, name):
        raise UserError(f"the student at '{path}' is built by the code it names ('{name}'), which is imported only "
                        "when you trust it: load_student(path, trust_code=True)")
    model, _ = create_student(name, len(classes), meta.get("student_kwargs"))
    try:
        model.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
        head = None
        if (path / HEAD_NAME).is_file():
            weights = load_file(str(path / HEAD_NAME))
            head = nn.Linear(weights["weight"].shape[1], weights["weight"].shape[0])
            head.load_state_dict(weights)
    except (OSError, RuntimeError, KeyError, SafetensorError) as exc:
        raise UserError(f"the weights of the student at '{path}' do not load into '{name}' ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:100]}); export it again with `dfkd distill`") from exc
    p = meta.get("preprocessing") or {}
    pcfg = config.get("pretrained_cfg", {})
    pre = Preprocessing(int(p.get("input_size") or pcfg["input_size"][-1]), tuple(p.get("mean") or pcfg["mean"]),
                        tuple(p.get("std") or pcfg["std"]))
    return LoadedStudent(model, classes, pre, config, head).to(device)


def push_student(folder: str | Path, repo: str, private: bool = False, token: str | None = None) -> str:
    """Upload ``folder`` to the Hub model repo ``repo`` (token: HF_TOKEN or `hf auth login`; never printed)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                                 commit_message="Upload data-free distilled student (dfkd)")
    except Exception as exc:
        raise UserError(f"cannot upload the student to the Hub repo '{repo}' ({type(exc).__name__}); check "
                        "`hf auth login` or HF_TOKEN, the repo name and the network") from exc
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo}")
