"""Config sections owned by ``prompts``: the shared ``teacher`` section and ``prompts``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from dfkd.configtools import at_least, check
from dfkd.stage import Experiment


@dataclass
class TeacherConfig:
    """The CLIP teacher (shared by prompts, synth and distill)."""

    model: str = "openai/clip-vit-base-patch32"  #: Hub id, local folder, or tiny:clip
    templates: str = "openai_80"  #: zero-shot template ensemble: openai_80, short_7, or a text file (one per line)
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    trust_remote_code: bool = False

    def validate(self, prefix: str) -> None:
        check(bool(self.model), prefix + "model", "must name a CLIP model (Hub id, local folder or tiny:clip)")
        check(bool(self.templates), prefix + "templates", "must be openai_80, short_7 or a path to a template file")


@dataclass
class ContrastiveConfig:
    """Contrastive-Prompt learning (docs/method.md section 3)."""

    num_styles: int = 80  #: K learned style vectors
    steps: int = 300
    lr: float = 1e-2
    tau: float = 0.1  #: InfoNCE temperature
    tau_cls: float = 0.01  #: class-consistency temperature
    lambda_cls: float = 1.0
    noise_std: float = 0.1  #: positive-view noise, in units of the embedding table's per-dimension std
    style_batch: int = 0  #: styles per step (0 = all K)
    class_batch: int = 16  #: random classes per step for the class-consistency loss
    rounds: int = 1  #: rounds of learning; earlier rounds' features fill the memory bank
    checkpoint_every: int = 50
    style_template: str = "a {style} style image"  #: T_style: the style-only template of the anchors
    positive_template: str = "a picture in the style of {style}"  #: T_style': the positive view's template

    def validate(self, prefix: str) -> None:
        check(self.num_styles >= 2, prefix + "num_styles", "must be at least 2 (the diversity loss contrasts styles)")
        at_least(self, prefix, steps=1, lambda_cls=0, noise_std=0, style_batch=0, class_batch=1, rounds=1,
                 checkpoint_every=1)
        for name in ("lr", "tau", "tau_cls"):
            check(getattr(self, name) > 0, prefix + name, "must be positive")
        for key in ("style_template", "positive_template"):
            text = getattr(self, key)
            check(text.count("{style}") == 1 and "{class_name}" not in text, prefix + key,
                  "must contain {style} exactly once and no {class_name}")


@dataclass
class PromptsConfig:
    """How prompts are diversified (docs/method.md sections 2-3)."""

    method: str = "contrastive"  #: plain, handcrafted, mix, random, contrastive, or a registered name
    template: str = "a {style} style image of a {class_name}"
    plain_template: str = "a photo of a {class_name}"
    #: "a" before {class_name} / a style word made "an" where English says so ("an elephant", "an engraving"); off
    #: for a text encoder that only ever read "a" (the digits kit's captions)
    articles: bool = True
    style_dictionary: str | None = None  #: a text file of style words (one per line); default: package data
    num_style_tokens: int = 1  #: pseudo tokens in the style slot
    mix_words: list[int] = field(default_factory=lambda: [2, 3])  #: Mix-Prompt: words per style, uniform over this list
    mix_alpha: float = 1.0  #: Mix-Prompt: Dirichlet concentration
    random_rescale: bool = False  #: Random-Prompt: rescale to the median row norm of the embedding table
    #: Random-Prompt (and Contrastive-Prompt's start): statistics over every ordinary token row (vocabulary) or
    #: over the style dictionary's token rows (dictionary: for an encoder that trained only its captions' rows)
    random_rows: Literal["vocabulary", "dictionary"] = "vocabulary"
    encoder: str = "auto"  #: text encoder of the style tokens: auto (the generator's), teacher, or a model id
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)

    def validate(self, prefix: str) -> None:
        check(bool(self.method), prefix + "method", "must name a prompt method")
        check("{class_name}" in self.template and "{style}" in self.template, prefix + "template",
              "must contain both {style} and {class_name}")
        check("{class_name}" in self.plain_template, prefix + "plain_template", "must contain {class_name}")
        at_least(self, prefix, num_style_tokens=1)
        check(len(self.mix_words) > 0 and all(m >= 1 for m in self.mix_words), prefix + "mix_words",
              "must be a non-empty list of word counts >= 1")
        check(self.mix_alpha > 0, prefix + "mix_alpha", "must be positive")


class _Device(Protocol):
    device: str


class PromptsExperiment(Experiment, Protocol):
    """What the prompts stage reads of an experiment: its ``prompts`` section, the shared ``teacher`` section,
    the device of synthesis (which it learns on) and the text encoder the experiment's backend declares."""

    teacher: TeacherConfig
    prompts: PromptsConfig
    synth: _Device

    def prompt_encoder(self) -> tuple[str, str]: ...
