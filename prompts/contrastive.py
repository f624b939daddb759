"""Contrastive-Prompt learning (docs/method.md section 3) and the learned style bank on disk.

The text encoder is frozen; only ``S = {s_1..s_K}`` ``(K, n, d)`` is learned, initialised as
Random-Prompt vectors. Per step, for a batch of styles ``b`` and a batch of classes:

* ``v_k = f(T_style(s_k))``, positive ``v_k+ = f(T_style'(s_k + eps))`` with ``eps ~ N(0, (noise_std * sigma)^2)``;
* ``L_div``: InfoNCE of ``v_k`` against ``{v_k+} + {v_j, j != k} + memory bank`` at temperature ``tau``;
  the memory bank holds the (fixed) features of styles learned in earlier rounds;
* ``L_cls = CE(<u_{k,c'}, w_c> / tau_cls, c')`` with ``w_c = f(plain_template(c))``;
* ``L = L_div + lambda_cls * L_cls``, Adam.

With ``rounds = R`` the ``K`` styles are learned in ``R`` consecutive groups of ``steps`` steps each.
Every random draw of a step is seeded by ``(seed, round, step)``, so a run resumed from its
checkpoint ends exactly where an uninterrupted one does.

Files, in ``OUTPUT_DIR/prompts/contrastive/``: ``styles.safetensors`` (``styles`` ``(K, n, d)``
float32), ``meta.json`` (encoder identity, templates, K, per-step losses, seed, dictionary,
diagnostics) and, while learning, ``checkpoint.pt``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from dfkd.errors import UserError
from dfkd.runtime import atomic_path, atomic_write, derive_seed
from dfkd.schema import file_sha256

from .config import PromptsConfig
from .encoder import EncoderIdentity, StyleTextEncoder, StyleVectors
from .styles import (
    EmbeddingStats,
    mean_pairwise_cosine_distance,
    random_styles,
    style_features,
    text_features,
)
from .templates import with_articles

BANK_SUBDIR = Path("prompts") / "contrastive"
STYLES_FILE = "styles.safetensors"
META_FILE = "meta.json"
CHECKPOINT_FILE = "checkpoint.pt"


def bank_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / BANK_SUBDIR


# ---------------------------------------------------------------------------------------------- bank on disk
@dataclass
class StyleBank:
    """Learned styles ``vectors`` ``(K, n, d)`` float32 (CPU) and their ``meta`` (see module docstring)."""

    vectors: torch.Tensor
    meta: dict
    path: Path

    @property
    def identity(self) -> EncoderIdentity:
        return EncoderIdentity(**self.meta["encoder"])


def load_style_bank(run_dir: str | Path, encoder: StyleTextEncoder | None = None) -> StyleBank:
    """The bank learned into ``run_dir``; with ``encoder``, refuse a bank of another text encoder."""
    from safetensors.torch import load_file

    folder = bank_dir(run_dir)
    path, meta_path = folder / STYLES_FILE, folder / META_FILE
    if not path.is_file() or not meta_path.is_file():
        raise UserError(f"no learned Contrastive-Prompt styles in {folder}; run `dfkd prompts learn --config ...` "
                        "with the same output_dir first")
    meta = read_bank_meta(folder)
    if meta is None:
        raise UserError(f"the learned Contrastive-Prompt styles in {folder} are damaged (they differ from what was "
                        "written); run `dfkd prompts learn` with the same config to learn them again")
    bank = StyleBank(load_file(str(path))["styles"].float(), meta, path)
    if encoder is not None:
        encoder.check_styles(StyleVectors(bank.vectors, bank.identity))
    return bank


def read_bank_meta(folder: Path) -> dict | None:
    """``meta.json`` of a finished bank when it reads and the styles file still hashes to the sha256 it records;
    None when either is missing or damaged (a bank from before hashes were recorded counts as damaged)."""
    try:
        meta = json.loads((folder / META_FILE).read_text("utf-8"))
        ok = isinstance(meta, dict) and meta.get("styles_sha256") == file_sha256(folder / STYLES_FILE)
    except (OSError, ValueError):
        return None
    return meta if ok else None


def save_style_bank(folder: Path, vectors: torch.Tensor, meta: dict) -> Path:
    """Write ``styles.safetensors`` then ``meta.json`` (with the styles file's sha256) atomically; the JSON is written
    last, so its presence, with a matching hash, marks a finished bank."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / STYLES_FILE) as tmp:
        save_file({"styles": vectors.detach().float().cpu().contiguous()}, str(tmp), metadata={
            "encoder_model_id": meta["encoder"]["model_id"], "embedding_dim": str(meta["encoder"]["embedding_dim"]),
            "seed": str(meta["seed"]), "template": meta["template"]})
    meta = {**meta, "styles_sha256": file_sha256(folder / STYLES_FILE)}
    atomic_write(folder / META_FILE, json.dumps(meta, indent=1))
    return folder / STYLES_FILE


def learn_fingerprint(cfg: PromptsConfig, classes: Sequence[str], seed: int, encoder_id: str) -> dict:
    """Everything the learned styles depend on (``checkpoint_every`` excluded): a bank or checkpoint
    with another fingerprint is not reused."""
    c = asdict(cfg.contrastive)
    c.pop("checkpoint_every")
    return {"encoder": encoder_id, "classes": list(classes), "seed": int(seed), "template": cfg.template,
            "plain_template": cfg.plain_template, "articles": cfg.articles, "num_style_tokens": cfg.num_style_tokens,
            "random_rescale": cfg.random_rescale, "contrastive": c}


# ---------------------------------------------------------------------------------------------- losses
def info_nce(anchors: torch.Tensor, positives: torch.Tensor, memory: torch.Tensor, tau: float) -> torch.Tensor:
    """``L_div``: mean over anchors ``(B, D)`` of ``-log softmax`` of the positive ``(B, D)`` among
    ``{positive} + other anchors + memory (M, D)``; all features normalised."""
    pos = (anchors * positives).sum(-1, keepdim=True)
    within = anchors @ anchors.t()
    eye = torch.eye(len(anchors), dtype=torch.bool, device=anchors.device)
    within = within.masked_fill(eye, float("-inf"))
    logits = torch.cat([pos, within, anchors @ memory.t()], dim=1) / tau
    return nn.functional.cross_entropy(logits, torch.zeros(len(anchors), dtype=torch.long, device=anchors.device))


def class_consistency_loss(styled: torch.Tensor, plain: torch.Tensor, labels: torch.Tensor, tau_cls: float) -> torch.Tensor:
    """``L_cls``: CE of styled class features ``(B, D)`` against plain class features ``(C, D)``."""
    return nn.functional.cross_entropy(styled @ plain.t() / tau_cls, labels)


# ---------------------------------------------------------------------------------------------- learner
class ContrastiveLearner:
    """Learns the ``K`` styles of ``cfg.contrastive`` for ``classes`` in ``encoder``'s token space."""

    def __init__(self, encoder: StyleTextEncoder, classes: Sequence[str], cfg: PromptsConfig, seed: int):
        self.encoder, self.classes, self.cfg, self.seed = encoder, list(classes), cfg, int(seed)
        self.c = cfg.contrastive
        self.stats = EmbeddingStats.for_config(cfg, encoder)  # initialised as Random-Prompt
        fit = (lambda t, n: with_articles(t, n)) if cfg.articles else (lambda t, n: t)
        #: per class: the template the styles are learned in (articles fitted to the name, as synthesis writes it)
        self.templates = [fit(cfg.template, n) for n in self.classes]
        self.plain = text_features(encoder, [fit(cfg.plain_template, n).replace("{class_name}", n) for n in self.classes])

    def initial_styles(self) -> torch.Tensor:
        """``(K, n, d)``: Random-Prompt vectors drawn from the learning seed."""
        return random_styles(self.stats, self.c.num_styles, self.cfg.num_style_tokens,
                             derive_seed("contrastive-init", self.seed), self.cfg.random_rescale)

    def rounds(self) -> list[tuple[int, int]]:
        """``[start, end)`` style ranges learned in each round (as even as possible)."""
        k, r = self.c.num_styles, min(self.c.rounds, self.c.num_styles)
        return list(itertools.pairwise(round(i * k / r) for i in range(r + 1)))

    def style_only(self, styles: torch.Tensor, template: str | None = None) -> torch.Tensor:
        """``(B, D)`` features of ``styles`` ``(B, n, d)`` in the style-only template."""
        return style_features(self.encoder, template or self.c.style_template, None, styles)

    def styled_class(self, styles: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(B, D)``: features of ``template(styles[i], classes[labels[i]])``."""
        idx = labels.tolist()
        return style_features(self.encoder, [self.templates[i] for i in idx], [self.classes[i] for i in idx], styles)

    def loss(self, styles: torch.Tensor, memory: torch.Tensor, rnd: int, step: int) -> dict[str, torch.Tensor]:
        """Losses of one step on the round's styles ``(k_r, n, d)`` (trainable) with ``memory`` ``(M, D)``."""
        g = torch.Generator().manual_seed(derive_seed("contrastive-step", self.seed, rnd, step))
        k = styles.shape[0]
        batch = torch.randperm(k, generator=g)[: self.c.style_batch] if 0 < self.c.style_batch < k else torch.arange(k)
        s = styles[batch]
        noise = torch.randn(s.shape, generator=g) * (self.c.noise_std * self.stats.std)
        anchors = self.style_only(s)
        positives = self.style_only(s + noise.to(s.device), self.c.positive_template)
        div = info_nce(anchors, positives, memory, self.c.tau)
        num_c = len(self.classes)
        labels = (torch.randperm(num_c, generator=g)[: self.c.class_batch] if self.c.class_batch <= num_c
                  else torch.randint(num_c, (self.c.class_batch,), generator=g))
        pick = torch.randint(len(batch), (len(labels),), generator=g)
        cls = class_consistency_loss(self.styled_class(s[pick], labels), self.plain, labels.to(self.plain.device),
                                     self.c.tau_cls)
        return {"loss": div + self.c.lambda_cls * cls, "div": div, "cls": cls}

    @torch.no_grad()
    def memory(self, styles: torch.Tensor, end: int) -> torch.Tensor:
        """``(end, D)`` fixed features of the styles learned in earlier rounds."""
        if end == 0:
            return self.plain.new_zeros((0, self.plain.shape[1]))
        return self.style_only(styles[:end])

    @torch.no_grad()
    def diagnostics(self, styles: torch.Tensor) -> dict[str, float]:
        """Mean pairwise cosine distance of the style-only features, and the zero-shot accuracy of every
        (style, class) prompt against the plain class features."""
        feats = self.style_only(styles)
        k, c = styles.shape[0], len(self.classes)
        labels = torch.arange(c).repeat_interleave(k)
        u = torch.cat([self.styled_class(styles.repeat(c, 1, 1)[i:i + 256], labels[i:i + 256])
                       for i in range(0, k * c, 256)])
        acc = (u @ self.plain.t()).argmax(-1).cpu() == labels
        return {"diversity": mean_pairwise_cosine_distance(feats), "class_consistency": float(acc.float().mean())}


# ---------------------------------------------------------------------------------------------- the loop
@dataclass
class LearnState:
    """What a checkpoint holds: the next (round, step) to run, all styles, Adam's state and the losses."""

    round: int
    step: int
    styles: torch.Tensor
    optimizer: dict | None
    losses: list[dict]


def _save_checkpoint(path: Path, state: LearnState, fingerprint: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"fingerprint": fingerprint, **asdict(state)}, tmp)


def _load_checkpoint(path: Path, fingerprint: dict) -> LearnState | None:
    """The state in ``path``, read without unpickling code (tensors, numbers, strings, dicts and lists only); None
    when there is none, or when it is damaged (said, and learning starts over: the steps are deterministic)."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt, or holding more than plain data: never trusted
        print(f"dfkd: ignoring the damaged checkpoint {path} ({type(exc).__name__}); learning starts over")
        return None
    if data.pop("fingerprint") != fingerprint:
        raise UserError(f"the checkpoint {path} was written with other settings (classes, encoder, seed or "
                        "prompts.contrastive); delete it to start over, or restore those settings to resume")
    return LearnState(**data)


def learn_styles(learner: ContrastiveLearner, checkpoint: Path | None, fingerprint: dict, *, progress: bool = True,
                 on_step: Callable[[int, int, dict], None] | None = None) -> LearnState:
    """Run (or resume from ``checkpoint``) all rounds; returns the final state (``styles`` ``(K, n, d)``).

    ``on_step(round, step, losses)`` is called after every step (and after its checkpoint, if any).
    """
    from tqdm.auto import tqdm

    c = learner.c
    state = (_load_checkpoint(checkpoint, fingerprint) if checkpoint else None) or \
        LearnState(0, 0, learner.initial_styles(), None, [])
    rounds = learner.rounds()
    bar = tqdm(total=len(rounds) * c.steps, initial=state.round * c.steps + state.step, disable=not progress,
               desc="contrastive styles", unit="step", dynamic_ncols=True)
    device = learner.encoder.device
    styles = state.styles.to(device)
    while state.round < len(rounds):
        start, end = rounds[state.round]
        memory = learner.memory(styles, start)
        param = nn.Parameter(styles[start:end].clone())
        opt = torch.optim.Adam([param], lr=c.lr)
        if state.optimizer is not None:
            opt.load_state_dict(state.optimizer)
        for step in range(state.step, c.steps):
            opt.zero_grad(set_to_none=True)
            losses = learner.loss(param, memory, state.round, step)
            losses["loss"].backward()
            opt.step()
            styles[start:end] = param.detach()
            record = {"round": state.round, "step": step, **{k: float(v.detach()) for k, v in losses.items()}}
            state.losses.append(record)
            state.styles, state.optimizer, state.step = styles.cpu(), opt.state_dict(), step + 1
            round_done = state.step == c.steps
            if round_done:
                state.round, state.step, state.optimizer = state.round + 1, 0, None
            if checkpoint and (round_done or state.step % c.checkpoint_every == 0):
                _save_checkpoint(checkpoint, state, fingerprint)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", div=f"{record['div']:.3f}", cls=f"{record['cls']:.3f}")
            if on_step is not None:
                on_step(record["round"], step, record)
    bar.close()
    state.styles = styles.detach().cpu()
    return state
