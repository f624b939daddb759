"""A real-size run: `dfkd run` end to end on models with the exact real architectures, at random init.

    python bench/fullsize.py                         # CPU: SD-Turbo's shape, then SDXL-Turbo's if memory allows
    python bench/fullsize.py --device cuda           # the same on a GPU (synthesis and distillation on cuda)
    python bench/fullsize.py --models sd-turbo --images-per-class 2

It builds, once, into ``--models-dir`` (default ``runs/fullsize/models``), with random weights:

* ``clip-vit-b32``: ``openai/clip-vit-base-patch32``'s architecture (ViT-B/32 image tower at 224 px, 12-layer
  512-wide text tower, 512-d projection) and its processor (the real CLIP vocabulary);
* ``sd-turbo``: ``stabilityai/sd-turbo``'s (the SD 2.1 UNet, 865M; the 1024-wide, 23-layer OpenCLIP-H text
  tower; the SD VAE, f8; Euler, trailing timesteps; 512 px);
* ``sdxl-turbo``: ``stabilityai/sdxl-turbo``'s (the SDXL UNet, 2.6B; CLIP-L and OpenCLIP-bigG text encoders;
  the SDXL VAE; 512 px), when ``--models`` names it.

Then, per generator, ``dfkd run`` in a fresh process with tiny counts (2 classes, a few images, a few
steps): Contrastive-Prompt learning in the generator's text encoder(s), synthesis, distillation of a
``resnet18`` at 224 px by the ViT-B/32 teacher, and evaluation on a small toy DomainBed folder. It prints
parameters per component, and per stage the seconds, the peak resident memory of the process (sampled)
and the per-unit cost. This proves that real shapes go through (77-token context, 1024-wide text, f8
VAE, 224 px teacher, ViT-B/32 learning); random weights make the images noise, so it says nothing of
quality.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GENERATORS = ("sd-turbo", "sdxl-turbo")
STAGES = ("prompts", "synth", "distill", "eval")
MARKER = "fullsize.json"


# ---------------------------------------------------------------------------------------------- builders
def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_clip(out: Path) -> dict[str, int]:
    """openai/clip-vit-base-patch32's architecture (transformers' CLIPConfig defaults are exactly it)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from dfkd.tiny import make_clip_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(text_config={"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407},
                        vision_config={"patch_size": 32, "image_size": 224}, projection_dim=512)
    model = CLIPModel(config).eval()
    model.save_pretrained(out)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=make_clip_tokenizer()).save_pretrained(out)
    return {"text tower": _params(model.text_model) + _params(model.text_projection),
            "image tower": _params(model.vision_model) + _params(model.visual_projection)}


def _sd_vae(sdxl: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
                         block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024 if sdxl else 768,
                         scaling_factor=0.13025 if sdxl else 0.18215, force_upcast=sdxl)


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  timestep_spacing="trailing", steps_offset=1, prediction_type="epsilon")


def _clip_text(hidden: int, layers: int, heads: int, projection: int | None, act: str):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, max_position_embeddings=77, hidden_act=act,
                         projection_dim=projection or 512, bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    return (CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)).eval()


def build_sd_turbo(out: Path) -> dict[str, int]:
    """stabilityai/sd-turbo: SD 2.1's UNet (v-less epsilon here: weights are random anyway), OpenCLIP-H text."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from dfkd.tiny import make_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
    text = _clip_text(1024, 23, 16, None, "gelu")
    vae = _sd_vae(sdxl=False)
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=make_clip_tokenizer(), unet=unet,
                            scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(out)
    return {"unet": _params(unet), "text encoder": _params(text), "vae": _params(vae)}


def build_sdxl_turbo(out: Path) -> dict[str, int]:
    """stabilityai/sdxl-turbo: the SDXL UNet, CLIP-L (768, 12 layers) and OpenCLIP-bigG (1280, 32 layers)."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    from dfkd.tiny import make_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)
    text = _clip_text(768, 12, 12, None, "quick_gelu")
    text_2 = _clip_text(1280, 32, 20, 1280, "gelu")
    vae = _sd_vae(sdxl=True)
    StableDiffusionXLPipeline(vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=make_clip_tokenizer(),
                              tokenizer_2=make_clip_tokenizer(), unet=unet, scheduler=_scheduler(),
                              force_zeros_for_empty_prompt=True).save_pretrained(out)
    return {"unet": _params(unet), "text encoder (CLIP-L)": _params(text), "text encoder 2 (bigG)": _params(text_2),
            "vae": _params(vae)}


BUILDERS = {"clip-vit-b32": build_clip, "sd-turbo": build_sd_turbo, "sdxl-turbo": build_sdxl_turbo}


def ensure_model(name: str, models_dir: Path) -> tuple[Path, dict[str, int]]:
    """The built folder of ``name`` (built in a fresh process, so its memory is returned before the run)."""
    folder = models_dir / name
    marker = folder / MARKER
    if not marker.is_file():
        print(f"building {name} (random weights, real architecture) -> {folder}", flush=True)
        start = time.perf_counter()
        code = (f"import json,sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path; "
                f"from bench.fullsize import BUILDERS; p = BUILDERS[{name!r}](Path({str(folder)!r})); "
                f"Path({str(marker)!r}).write_text(json.dumps(p))")
        subprocess.run([sys.executable, "-c", code], check=True)
        print(f"  built in {time.perf_counter() - start:.0f} s", flush=True)
    return folder, json.loads(marker.read_text())


# ---------------------------------------------------------------------------------------------- the run
class Sampler:
    """Peak resident memory of a process and its children, sampled every ``interval`` s, per current stage."""

    def __init__(self, pid: int, interval: float = 0.2):
        import psutil

        self.proc, self.interval = psutil.Process(pid), interval
        self.stage = "load"
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _rss(self) -> int:
        import psutil

        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs)
        except psutil.Error:
            return 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            rss = self._rss()
            self.peak[self.stage] = max(self.peak.get(self.stage, 0), rss)
            time.sleep(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()


def run_one(name: str, gen_dir: Path, clip_dir: Path, out: Path, args) -> dict:
    """``dfkd run`` on generator ``gen_dir`` in a fresh process; seconds and peak memory per stage."""
    classes = ["dog", "house"]
    toy = out / "toy-domains"
    if not toy.is_dir():
        subprocess.run([sys.executable, "-m", "dfkd.toydata", str(toy), "--classes", ",".join(classes),
                        "--domains", "photo,sketch", "--per-class", "2", "--size", "64"], check=True,
                       stdout=subprocess.DEVNULL)
    overrides = [
        f"classes=[{','.join(classes)}]", f"output_dir={out / name}", f"teacher.model={clip_dir}",
        "teacher.templates=short_7", f"synth.model={gen_dir}", f"synth.images_per_class={args.images_per_class}",
        f"synth.batch_size={args.images_per_class}", f"synth.resolution={args.resolution}",
        f"synth.store_resolution={min(256, args.resolution)}",
        "synth.steps=1", "synth.guidance_scale=0.0", f"synth.device={args.device}", f"synth.dtype={args.dtype}",
        "synth.shard_size=64", "synth.progress=false", "prompts.method=contrastive",
        f"prompts.contrastive.steps={args.learn_steps}", "prompts.contrastive.num_styles=4",
        "prompts.contrastive.class_batch=2", "prompts.contrastive.style_batch=4",
        f"distill.student={args.student}", f"distill.input_size={args.input_size}", f"distill.max_steps={args.distill_steps}",
        "distill.batch_size=2", "distill.mixed_precision=no", "distill.checkpointing_steps=1000",
        f"eval.data={toy}", "eval.domains=[photo,sketch]", "eval.batch_size=4",
    ]
    shutil.rmtree(out / name, ignore_errors=True)  # a fresh run every time: a finished stage would be skipped
    cmd = [sys.executable, "-m", "dfkd", "run", "--config", str(ROOT / "configs" / "tiny.yaml"), *overrides]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.device == "cpu":
        env["ACCELERATE_USE_CPU"] = "true"
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    sampler = Sampler(proc.pid)
    marks: dict[str, float] = {"load": 0.0}
    log = []
    header = re.compile(r"^dfkd run: \d/4 (\w+):")
    for line in proc.stdout:
        log.append(line)
        m = header.match(line)
        if m:
            sampler.stage = m.group(1)
            marks[m.group(1)] = time.perf_counter() - start
        elif line.startswith("dfkd run: done"):
            sampler.stage = "done"
            marks["done"] = time.perf_counter() - start
        if args.verbose or m or "images/s" in line or "this run generated" in line or "learned" in line:
            print("   ", line.rstrip()[:200], flush=True)
    rc = proc.wait()
    sampler.stop()
    (out / f"{name}.log").write_text("".join(log))
    if rc != 0:
        print("".join(log[-40:]))
        raise SystemExit(f"dfkd run on {name} failed (exit {rc}); the log is in {out / f'{name}.log'}")
    order = [s for s in ("load", *STAGES, "done") if s in marks]
    seconds = {a: marks[b] - marks[a] for a, b in itertools.pairwise(order)}
    text = "".join(log)
    gen = re.search(r"this run generated (\d+) images in ([\d.]+) s", text)
    dist = re.search(r"dfkd distill: (\d+) steps, ([\d.]+) images/s", text)
    return {"seconds": seconds, "peak": dict(sampler.peak), "total": time.perf_counter() - start,
            "images": int(gen.group(1)) if gen else None, "gen_seconds": float(gen.group(2)) if gen else None,
            "distill_steps": int(dist.group(1)) if dist else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--models", default=",".join(GENERATORS), help=f"generators to run, of {', '.join(GENERATORS)}")
    p.add_argument("--device", default="cpu", help="cpu or cuda (synthesis and distillation)")
    p.add_argument("--dtype", default=None, help="synth.dtype (default fp32 on cpu, fp16 on cuda)")
    p.add_argument("--images-per-class", type=int, default=2)
    p.add_argument("--resolution", type=int, default=512, help="synth.resolution (px)")
    p.add_argument("--student", default="resnet18", help="distill.student (a timm name)")
    p.add_argument("--input-size", type=int, default=224, help="distill.input_size (px)")
    p.add_argument("--learn-steps", type=int, default=2)
    p.add_argument("--distill-steps", type=int, default=2)
    p.add_argument("--models-dir", type=Path, default=ROOT / "runs" / "fullsize" / "models")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "fullsize")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "fullsize.json")
    p.add_argument("--verbose", action="store_true", help="echo every line of dfkd run")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("fp32" if args.device == "cpu" else "fp16")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in GENERATORS]
    if unknown:
        p.error(f"unknown generator(s) {unknown}; valid: {', '.join(GENERATORS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    clip_dir, clip_params = ensure_model("clip-vit-b32", args.models_dir)
    results = {}
    for name in names:
        gen_dir, params = ensure_model(name, args.models_dir)
        print(f"dfkd run with {name} (device {args.device}, {args.dtype})", flush=True)
        results[name] = run_one(name, gen_dir, clip_dir, args.out, args) | {"params": params}
    print()
    print("teacher clip-vit-b32: " + ", ".join(f"{k} {v / 1e6:.0f}M" for k, v in clip_params.items()))
    for name, r in results.items():
        print(f"\n{name}: " + ", ".join(f"{k} {v / 1e6:.0f}M" for k, v in r["params"].items())
              + f"; dfkd run {r['total']:.0f} s in all")
        print(f"  {'stage':<9} {'seconds':>8} {'peak RSS':>9}  per unit")
        units = {
            "prompts": f"{r['seconds'].get('prompts', 0) / max(args.learn_steps, 1):.1f} s per learning step",
            "synth": (f"{r['gen_seconds'] / r['images']:.1f} s per image generated ({r['images']} images)"
                      if r["images"] else ""),
            "distill": (f"{r['seconds'].get('distill', 0) / r['distill_steps']:.1f} s per step (with loading and eval)"
                        if r["distill_steps"] else ""),
        }
        if r["seconds"].get("eval", 0) < 1:  # distill evaluates at its end when eval.data is set
            units["eval"] = "done at the end of distill (its seconds are in distill's)"
        for stage in ("load", *STAGES):
            if stage in r["seconds"]:
                print(f"  {stage:<9} {r['seconds'][stage]:>8.1f} {r['peak'].get(stage, 0) / 2**30:>7.1f} GB  "
                      f"{units.get(stage, '')}")
        print(f"  peak resident memory of the run: {max(r['peak'].values()) / 2**30:.1f} GB")
    record = {"command": " ".join(["python", "bench/fullsize.py", *(argv if argv is not None else sys.argv[1:])]),
              "device": args.device, "dtype": args.dtype, "teacher_params": clip_params, "runs": results}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=1))
    print(f"\nresults -> {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
