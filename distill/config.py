"""Config sections owned by ``distill``: ``distill`` and ``eval``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from dfkd.configtools import at_least, check
from dfkd.stage import Experiment
from prompts.config import TeacherConfig


@dataclass
class LossConfig:
    """Loss weights (docs/method.md section 5); a weight of 0 turns a loss off."""

    kd: float = 1.0
    ce: float = 0.0
    emb: float = 0.0
    temperature: float = 4.0
    extra: dict[str, float] = field(default_factory=dict)  #: weights of losses registered by plugins, by name

    def validate(self, prefix: str) -> None:
        check(min(self.kd, self.ce, self.emb) >= 0, prefix + "kd", "and the other loss weights must be >= 0")
        check(self.kd + self.ce + self.emb + sum(self.extra.values()) > 0, prefix + "kd",
              "ce, emb and extra cannot all be 0; turn on at least one loss")
        check(all(w >= 0 for w in self.extra.values()), prefix + "extra", "weights must be >= 0")
        check(self.temperature > 0, prefix + "temperature", "must be positive")


@dataclass
class AugmentConfig:
    random_resized_crop: bool = True
    scale: list[float] = field(default_factory=lambda: [0.35, 1.0])
    hflip: bool = True
    color_jitter: float = 0.4  #: strength (brightness, contrast, saturation); 0 turns it off
    #: MixUp between images of a batch, lambda ~ Beta(mixup, mixup); 0 turns it off. The teacher labels the
    #: mixed view (online KD), so the student also learns the teacher between the synthetic images.
    mixup: float = 0.0
    cutmix: float = 0.0  #: CutMix likewise (a box of another image pasted in); with both on, each batch picks one

    def validate(self, prefix: str) -> None:
        check(len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1, prefix + "scale",
              "must be [min, max] with 0 < min <= max <= 1")
        at_least(self, prefix, color_jitter=0, mixup=0, cutmix=0)


@dataclass
class FewShotConfig:
    data: str | None = None  #: DomainBed-layout root (or HF dataset) holding real labelled images
    domain: str | None = None  #: the domain to draw the shots from
    shots: int = 0  #: real images per class (0 = data-free)
    ce_weight: float = 1.0  #: weight of the cross-entropy on the real images

    def validate(self, prefix: str) -> None:
        at_least(self, prefix, shots=0)
        check(self.shots == 0 or self.data is not None, prefix + "data", "must be set when few_shot.shots > 0")


@dataclass
class DistillConfig:
    student: str = "resnet18"  #: a timm model name, a registered factory, or module:attr
    student_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    dataset: str | None = None  #: synthetic dataset folder; default OUTPUT_DIR/dataset
    input_size: int | None = None  #: default: the student's pretrained_cfg
    mean: list[float] | None = None
    std: list[float] | None = None
    epochs: int = 30
    max_steps: int | None = None  #: overrides epochs when set
    batch_size: int = 128
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    scheduler: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = 2
    device_resident: Literal["auto", "always", "never"] = "auto"
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 2
    resume_from_checkpoint: str | None = None  #: latest or a checkpoint folder
    overwrite: bool = False  #: start over when OUTPUT_DIR holds checkpoints of other distill settings or data
    eval_every: int = 0  #: steps between evaluations during training (0 = only at the end)
    log_with: str = "tensorboard"  #: an Accelerate tracker, or none
    log_every: int = 10  #: steps between loss logs (progress bar and trackers)
    few_shot: FewShotConfig = field(default_factory=FewShotConfig)
    push_to_hub: bool = False
    hub_repo: str | None = None
    hub_private: bool = False

    def validate(self, prefix: str) -> None:
        check(bool(self.student), prefix + "student", "must name a timm model, a registered student or module:attr")
        at_least(self, prefix, epochs=1, max_steps=1, batch_size=1, gradient_accumulation_steps=1,
                 checkpointing_steps=1, checkpoints_total_limit=1, log_every=1, num_workers=0, warmup_steps=0,
                 eval_every=0, weight_decay=0, input_size=8)
        check(self.lr > 0, prefix + "lr", "must be positive")
        for name in ("mean", "std"):
            value = getattr(self, name)
            check(value is None or len(value) == 3, prefix + name, "must be a list of 3 numbers")
        check(self.std is None or all(v > 0 for v in self.std), prefix + "std", "must be positive")
        check(not self.push_to_hub or bool(self.hub_repo), prefix + "hub_repo",
              "must be set (user/name) when distill.push_to_hub=true")
        mixing = self.augment.mixup > 0 or self.augment.cutmix > 0
        check(not (mixing and (self.loss.ce > 0 or self.few_shot.shots > 0)), prefix + "augment.mixup",
              "and cutmix mix images, so hard labels (loss.ce, few_shot) no longer hold; turn one of them off")


@dataclass
class EvalConfig:
    data: str | None = None  #: DomainBed-layout root (ROOT/<domain>/<class>/*) or a Hugging Face dataset
    domains: list[str] | None = None  #: default: every domain found
    domain_column: str = "domain"
    label_column: str = "label"
    image_column: str = "image"
    split: str = "test"
    batch_size: int = 128
    max_images_per_domain: int | None = None
    student: str | None = None  #: exported student folder for `dfkd eval`; default OUTPUT_DIR/student

    def validate(self, prefix: str) -> None:
        at_least(self, prefix, batch_size=1, max_images_per_domain=1)


class DistillExperiment(Experiment, Protocol):
    """What the distill stage reads of an experiment: its ``distill`` and ``eval`` sections and the shared
    ``teacher`` section. What the images were made with, it reads from the dataset, not from the config."""

    teacher: TeacherConfig
    distill: DistillConfig
    eval: EvalConfig
