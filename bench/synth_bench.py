"""Synthesis throughput, side by side in one run (issue #4).

1. ``batch_speedup``: images/s of our diffusion backend (style-token ``prompt_embeds``, 16 different
   prompts per call, per-image generators) over a naive loop that calls the diffusers pipeline once
   per image with a text prompt.
2. ``writer_efficiency``: images/s of the whole ``dfkd synth`` generation loop (prompts, generator,
   teacher confidence, JPEG encoding, parquet shards) over the generator alone on the same images,
   both freshly loaded. ``generator_share_of_loop``: the fraction of the loop's own time spent inside
   the generator (immune to the machine's speed drifting between measurements).

Measurements are interleaved in rounds and each ratio is the median of its per-round ratios: the
machines are shared and their speed drifts by several times within minutes.

The model is small but not trivial: a 64 px Stable-Diffusion-style pipeline (UNet of a few million
parameters, an f=4 VAE, a 2-layer CLIP text encoder with the real CLIP tokenizer), random weights,
built from configs into a temporary folder and loaded through the real ``from_pretrained`` path.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/synth_bench.py [--device cuda] [--images 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch

CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person", "boat"]


def build_pipeline(out: Path) -> int:
    """Save a 64 px SD-style pipeline with random weights into ``out``; returns the UNet's parameter count."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dfkd.tiny import make_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(block_out_channels=(32, 64, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        norm_num_groups=32, sample_size=64)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                                        eos_token_id=49407, pad_token_id=49407))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=make_clip_tokenizer(), scheduler=sched,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(out)
    return sum(p.numel() for p in unet.parameters())


def config(model: Path, out: Path, args):
    from dfkd.config import load_config

    return load_config(REPO / "configs" / "tiny.yaml", [
        f"output_dir={out}", f"classes={json.dumps(CLASSES[:args.classes])}", "prompts.method=mix",
        f"synth.model={model}", f"synth.images_per_class={args.images // args.classes}", f"synth.steps={args.steps}",
        "synth.resolution=64", "synth.store_resolution=64", f"synth.batch_size={args.batch}",
        f"synth.shard_size={args.batch * 2}", f"synth.device={args.device}", "synth.progress=false"])


def naive_loop(pipe, prompts: list[str], steps: int) -> float:
    """images/s of one pipeline call per image with a text prompt (the usual tutorial loop)."""
    start = time.perf_counter()
    for i, text in enumerate(prompts):
        pipe(prompt=text, num_inference_steps=steps, guidance_scale=0.0, height=64, width=64,
             generator=torch.Generator().manual_seed(i)).images[0]
    return len(prompts) / (time.perf_counter() - start)


def generator_alone(backend, method, keys, batch: int) -> float:
    """images/s of our backend on ``keys`` in batches (prompt encoding included, no teacher, no writer)."""
    start = time.perf_counter()
    for i in range(0, len(keys), batch):
        backend.generate(*_batch(method, keys[i:i + batch]))
    return len(keys) / (time.perf_counter() - start)


def fresh_generator_alone(cfg, teacher, device, keys, batch: int) -> float:
    """Like :func:`generator_alone` on a freshly loaded backend, as the synth loop gets one (first-call costs included)."""
    from prompts.methods import create_prompt_method
    from synth.backends.diffusion import DiffusionBackend

    backend = DiffusionBackend.load(cfg, teacher=teacher, device=device)
    method = create_prompt_method(cfg.prompts, classes=cfg.classes, encoder=backend.text_encoder, seed=cfg.seed,
                                  run_dir=cfg.out)
    return generator_alone(backend, method, keys, batch)


class GenerateTimer:
    """Sums the seconds spent in ``DiffusionBackend.generate`` while active (bench instrumentation)."""

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        from synth.backends.diffusion import DiffusionBackend

        self._orig = DiffusionBackend.generate

        def timed(backend, *a, **k):
            t = time.perf_counter()
            try:
                return self._orig(backend, *a, **k)
            finally:
                self.seconds += time.perf_counter() - t

        DiffusionBackend.generate = timed
        return self

    def __exit__(self, *exc):
        from synth.backends.diffusion import DiffusionBackend

        DiffusionBackend.generate = self._orig


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def _batch(method, keys):
    records = [method.record(label, index) for label, index in keys]
    with torch.no_grad():
        return records, method.encode(records)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=32, help="images per measured path and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; ratios are medians over rounds")
    p.add_argument("--naive-images", type=int, default=8, help="naive-loop images per round")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "synth_bench.json"))
    args = p.parse_args(argv)

    from dfkd.cli import _setup_environment
    from prompts.methods import create_prompt_method
    from prompts.teacher import load_teacher
    from synth.backends.diffusion import DiffusionBackend
    from synth.plan import plan_shards
    from synth.run import process_state, synthesize

    _setup_environment()
    with tempfile.TemporaryDirectory(prefix="synth-bench-") as tmp:
        # 1. the model, loaded through the real from_pretrained path
        model = Path(tmp) / "sd64"
        unet_params = build_pipeline(model)
        cfg = config(model, Path(tmp) / "run", args)
        state, device = process_state(args.device), torch.device(args.device)
        teacher = load_teacher(cfg.teacher, cfg.classes, device, state.main_process_first)
        backend = DiffusionBackend.load(cfg, teacher=teacher, device=device)
        method = create_prompt_method(cfg.prompts, classes=cfg.classes, encoder=backend.text_encoder, seed=0,
                                      run_dir=cfg.out)
        keys = [k for spec in plan_shards(args.classes, args.images // args.classes, 10**9) for k in spec.keys]

        keys = keys[:args.images]
        texts = [f"a watercolor painting of a {CLASSES[i % args.classes]}" for i in range(args.naive_images)]
        backend.pipe(prompt=texts[0], num_inference_steps=args.steps, guidance_scale=0.0, height=64, width=64)
        backend.generate(*_batch(method, keys[:args.batch]))  # warm both paths once

        # 2.-3. interleaved rounds (the machine is shared and its speed drifts): naive loop vs batched
        #       backend (both warm), then generator alone vs the whole synth loop (both freshly loaded)
        timer = GenerateTimer()
        m = {"naive": [], "batched": [], "alone": [], "loop": [], "share": []}
        for r in range(args.rounds):
            m["naive"].append(naive_loop(backend.pipe, texts, args.steps))
            m["batched"].append(generator_alone(backend, method, keys, args.batch))
            m["alone"].append(fresh_generator_alone(cfg, teacher, device, keys, args.batch))
            timer.seconds = 0.0
            with timer:
                result = synthesize(config(model, Path(tmp) / f"run{r}", args), state=state)
            m["loop"].append(result.generated / result.generation_seconds)
            m["share"].append(timer.seconds / result.generation_seconds)
    res = {
        "batch_speedup": round(_median([b / n for b, n in zip(m["batched"], m["naive"])]), 2),
        "writer_efficiency": round(_median([lo / a for lo, a in zip(m["loop"], m["alone"])]), 3),
        "generator_share_of_loop": round(_median(m["share"]), 3),
        "per_round_images_per_s": {k: [round(x, 3) for x in v] for k, v in m.items()},
        "synth_end_to_end_images_per_s": round(result.generated / result.seconds, 2),
        "images": len(keys), "naive_images": args.naive_images, "rounds": args.rounds, "batch_size": args.batch,
        "steps": args.steps, "resolution": 64, "unet_params": unet_params, "device": args.device,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
