"""The experiment: one YAML file, one dataclass per section, dotted overrides on the command line.

```yaml
classes: [dog, elephant, giraffe]
output_dir: runs/pacs
seed: 0
teacher: {model: openai/clip-vit-base-patch32}
prompts: {method: contrastive}
synth: {backend: diffusion, model: stabilityai/sd-turbo}
distill: {student: resnet18}
eval: {data: /data/PACS}
imports: [my_pkg.plugins]   # modules imported first (custom prompt methods, students, backends)
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.config import DistillConfig, EvalConfig
from prompts.config import PromptsConfig, TeacherConfig
from synth.config import SynthConfig

from .configtools import apply_overrides, check, from_dict, load_yaml, to_dict
from .errors import UserError
from .runtime import import_user_module


@dataclass
class ExperimentConfig:
    classes: list[str]
    output_dir: str
    seed: int = 0
    name: str | None = None  #: a human name for cards and logs; default: the config file's stem
    imports: list[str] = field(default_factory=list)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self, prefix: str) -> None:
        check(len(self.classes) > 0, prefix + "classes", "is empty; list at least one category name")
        stripped = [c.strip() for c in self.classes]
        check(all(stripped), prefix + "classes", "contains an empty name; every class needs a name")
        dupes = sorted({c for c in stripped if stripped.count(c) > 1})
        check(not dupes, prefix + "classes", f"lists {', '.join(dupes)} more than once; class names must be unique")
        self.classes = stripped
        check(bool(self.output_dir), prefix + "output_dir", "must be a folder path")

    @property
    def out(self) -> Path:
        return Path(self.output_dir)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def prompt_encoder(self) -> tuple[str, str]:
        """(model id, kind) of the text encoder that style vectors live in.

        ``prompts.encoder=auto``: the one the backend declares (``Backend.text_encoder_source``: the diffusion
        pipeline's own text encoder, kind ``pipeline``; the teacher's for the CLIP-guided backend, kind ``clip``).
        ``teacher``: the teacher's. Anything else: that model id (``auto`` kind detection).
        """
        choice = self.prompts.encoder
        if choice == "auto":
            from synth.backends import get_backend

            return get_backend(self.synth.backend).text_encoder_source(self)
        if choice == "teacher":
            return self.teacher.model, "clip"
        return choice, "auto"


def import_plugins(modules: list[str]) -> None:
    """Import the user's modules named in ``imports`` (they register prompt methods, students, backends)."""
    for name in modules:
        try:
            import_user_module(name)
        except ImportError as exc:
            raise UserError(f"cannot import module '{name}' listed in imports ({exc}); check the name, and run from the "
                            "folder that holds it or add that folder to PYTHONPATH") from exc


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read ``path`` (YAML), apply dotted ``overrides``, build and validate the typed config."""
    data = load_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides or []))
    cfg = from_dict(ExperimentConfig, data)
    if cfg.name is None and path is not None:
        cfg.name = Path(path).stem
    import_plugins(cfg.imports)
    return cfg


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Build a validated config from a plain mapping (the inverse of ``cfg.to_dict()``)."""
    return from_dict(ExperimentConfig, data)
