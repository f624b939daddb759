"""Students: any timm model name, a registered factory, or the user's own ``module:attr`` factory.

```yaml
distill: {student: resnet18}                                          # timm.create_model
distill: {student: tiny_cnn, student_kwargs: {width: 32}}            # @register_student
distill: {student: "my_pkg.nets:TinyNet", student_kwargs: {width: 32}}  # factory(num_classes, **kwargs)
```

Every student maps ``(B, 3, S, S)`` normalised images to ``(B, num_classes)`` logits; its
preprocessing (mean, std, input size) comes from the config, else its timm ``pretrained_cfg``,
else ImageNet defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dfkd.errors import UserError
from dfkd.registry import Registry, did_you_mean
from dfkd.runtime import import_user_module

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: name -> factory(num_classes, **kwargs) -> nn.Module
STUDENTS: Registry[Callable[..., nn.Module]] = Registry("student", "distill.student", "@register_student")


register_student = STUDENTS.register  #: ``@register_student(name)`` on ``factory(num_classes, **kwargs) -> Module``


@dataclass
class Preprocessing:
    """What the student expects: ``(B, 3, input_size, input_size)`` floats normalised by ``mean``/``std``."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "mean": list(self.mean), "std": list(self.std)}


@register_student("tiny_cnn")
def tiny_cnn(num_classes: int, width: int = 16, depth: int = 3) -> nn.Module:
    """A small conv net (conv-BN-ReLU blocks, stride 2, global pool, linear); fast tests and examples."""
    layers: list[nn.Module] = []
    c_in = 3
    for i in range(depth):
        c_out = width * 2**i
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


def _import_attr(spec: str) -> Callable[..., nn.Module]:
    module_name, _, attr = spec.partition(":")
    try:
        module = import_user_module(module_name)
    except ImportError as exc:
        raise UserError(f"student '{spec}': cannot import module '{module_name}' ({exc}); run from the folder that "
                        "holds it, or add its folder to PYTHONPATH") from exc
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise UserError(f"student '{spec}': module '{module_name}' has no attribute '{attr}'; check distill.student")
    if not callable(factory):
        raise UserError(f"student '{spec}' is not callable; point distill.student at a factory(num_classes, **kwargs)")
    return factory


def _timm_factory(name: str) -> Callable[..., nn.Module] | None:
    import timm

    if not timm.is_model(name):
        return None

    def factory(num_classes: int, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
        except TypeError as exc:
            raise UserError(f"student '{name}': bad distill.student_kwargs ({exc})") from exc
        except (OSError, RuntimeError) as exc:
            if not pretrained:
                raise
            raise UserError(f"student '{name}': cannot load timm pretrained weights ({str(exc).splitlines()[0][:160]}); "
                            "download them first or set distill.pretrained=false") from exc

    return factory


def resolve_student(name: str) -> tuple[Callable[..., nn.Module], str]:
    """``name`` -> (factory, kind) with kind in ``registered``, ``import``, ``timm``; unknown -> UserError."""
    if name in STUDENTS:
        return STUDENTS[name], "registered"
    if ":" in name:
        return _import_attr(name), "import"
    factory = _timm_factory(name)
    if factory is not None:
        return factory, "timm"
    import timm

    hint = did_you_mean(name, [*STUDENTS, *timm.list_models()])
    raise UserError(f"unknown student '{name}' (distill.student);{hint} use a timm model name (timm.list_models()), "
                    f"a registered student ({', '.join(STUDENTS.names())}) or module:attr")


def create_student(name: str, num_classes: int, kwargs: dict[str, Any] | None = None,
                   pretrained: bool = False) -> tuple[nn.Module, str]:
    """Build the student; returns (module, kind)."""
    factory, kind = resolve_student(name)
    kwargs = dict(kwargs or {})
    if kind == "timm":
        return factory(num_classes, pretrained=pretrained, **kwargs), kind
    if pretrained:
        raise UserError(f"distill.pretrained=true needs a timm student; '{name}' is a {kind} factory (load weights in it)")
    try:
        model = factory(num_classes, **kwargs)
    except TypeError as exc:
        raise UserError(f"student '{name}' could not be built with num_classes={num_classes} and "
                        f"distill.student_kwargs={kwargs} ({exc})") from exc
    if not isinstance(model, nn.Module):
        raise UserError(f"student '{name}' returned {type(model).__name__}, not a torch.nn.Module")
    return model, kind


def student_preprocessing(model: nn.Module, input_size: int | None = None, mean: Sequence[float] | None = None,
                          std: Sequence[float] | None = None) -> Preprocessing:
    """Config values first, then the model's ``pretrained_cfg``, then 224 px and ImageNet mean/std."""
    pcfg = dict(getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {})
    size = input_size or (pcfg.get("input_size") or (3, 224, 224))[-1]
    mean = tuple(mean or pcfg.get("mean") or IMAGENET_MEAN)
    std = tuple(std or pcfg.get("std") or IMAGENET_STD)
    return Preprocessing(int(size), tuple(float(m) for m in mean), tuple(float(s) for s in std))


@torch.no_grad()
def check_student_output(model: nn.Module, name: str, num_classes: int, input_size: int) -> None:
    """Run a ``(2, 3, S, S)`` batch in eval mode; anything but ``(2, num_classes)`` logits is a UserError."""
    was_training = model.training
    model.eval()
    try:
        out = model(torch.zeros(2, 3, input_size, input_size))
    except Exception as exc:
        raise UserError(f"student '{name}' fails on a (2, 3, {input_size}, {input_size}) batch "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); check distill.input_size") from exc
    finally:
        model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, num_classes):
        raise UserError(f"student '{name}' must return (B, num_classes) = (2, {num_classes}) logits, got {shape}")


def classifier_in_features(model: nn.Module, num_classes: int) -> nn.Linear:
    """The last ``nn.Linear`` with ``num_classes`` outputs: its input is the student's feature ``f_S(x)``."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not linears:
        raise UserError("embedding distillation (distill.loss.emb > 0) needs a student whose classifier is an "
                        f"nn.Linear with {num_classes} outputs; set distill.loss.emb=0 for this student")
    return linears[-1]


class DistillStudent(nn.Module):
    """The trained module: the student plus, for embedding distillation, the projection head ``h``.

    ``forward(x)`` with ``x`` ``(B, 3, S, S)`` normalised returns ``(logits (B, C), embedding (B, D) or None)``;
    the embedding is ``h(f_S(x))``, ``f_S(x)`` being the input of the student's classifier (tapped by a hook).
    """

    def __init__(self, student: nn.Module, num_classes: int, teacher_dim: int | None = None):
        super().__init__()
        self.student = student
        self.head: nn.Linear | None = None
        self._features: torch.Tensor | None = None
        if teacher_dim:
            classifier = classifier_in_features(student, num_classes)
            self.head = nn.Linear(classifier.in_features, teacher_dim)
            classifier.register_forward_hook(self._tap)

    def _tap(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self._features = inputs[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.student(x)
        if self.head is None:
            return logits, None
        feats, self._features = self._features, None
        return logits, self.head(feats.flatten(1))
