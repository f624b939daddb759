"""The diffusion backend over SDXL, SD 3 and FLUX.1 (tiny pipelines): every prompt method, images equal to the
pipeline driven by its own prompt encoding, guidance with negative prompts, and the memory options."""

from __future__ import annotations

import pytest
import torch
from fixtures import TINY_YAML, diffusers_prompt_embeds, tiny_family_pipeline
from synth_helpers import fast_config, load_backend, records_and_encoding

from dfkd.errors import UserError

FAMILIES = ["sdxl", "sd3", "flux"]
KEYS = [(0, 0), (1, 0), (2, 0), (0, 1)]




@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, tmp_path_factory, teacher):
    cfg = fast_config(tmp_path_factory.mktemp(request.param), f"synth.model=tiny:{request.param}")
    return request.param, cfg, load_backend(cfg, teacher)


@pytest.mark.parametrize("method", ["plain", "handcrafted", "mix", "random"])
def test_every_method_gives_images_in_range(loaded, method):
    family, cfg, backend = loaded
    assert backend.family == family
    cfg.prompts.method = method
    records, enc = records_and_encoding(cfg, backend, KEYS)
    images = backend.generate(records, enc)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1 and images.std() > 0
    assert torch.equal(images, backend.generate(records, enc))  # bit for bit on CPU


@pytest.mark.parametrize("family", FAMILIES)
def test_contrastive_styles_learned_for_the_family_drive_it(tmp_path, teacher, family):
    from prompts.cli import learn

    cfg = fast_config(tmp_path, f"synth.model=tiny:{family}", "prompts.method=contrastive",
                      "prompts.contrastive.steps=2", "prompts.contrastive.num_styles=4", "prompts.contrastive.class_batch=3")
    assert learn(cfg, None) == 0
    backend = load_backend(cfg, teacher)
    records, enc = records_and_encoding(cfg, backend, KEYS)
    assert {r.style_id for r in records} <= set(range(4))
    assert records[0].style_vector.shape[-1] == backend.text_encoder.embedding_dim == sum(backend.text_encoder.splits)
    assert backend.generate(records, enc).shape == (4, 3, 32, 32)


def _by_hand(family, cfg, records, texts, negative=None):
    """The images diffusers' own pipeline makes from its own encoding of ``texts`` (and of ``negative``)."""
    pipe = tiny_family_pipeline(family)
    embeds, pooled, neg, neg_pooled = diffusers_prompt_embeds(pipe, family, texts, negative)
    kwargs = {} if neg is None else {"negative_prompt_embeds": neg, "negative_pooled_prompt_embeds": neg_pooled}
    s = cfg.synth
    with torch.no_grad():
        out = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_inference_steps=s.steps,
                   guidance_scale=s.guidance_scale, height=s.resolution, width=s.resolution, output_type="pt",
                   generator=[torch.Generator().manual_seed(int(r.seed)) for r in records], **kwargs)
    return out.images.float().clamp(0, 1)


def test_images_are_the_pipelines_own_for_the_prompts(loaded):
    """Two prompts under one seed: the backend's images equal the family's pipeline run on its own encoding of the
    prompts; the prompts give different images."""
    from dataclasses import replace

    family, cfg, backend = loaded
    cfg.prompts.method = "handcrafted"
    records, enc = records_and_encoding(cfg, backend, [(0, 0), (1, 0)])
    records = [replace(r, seed=records[0].seed) for r in records]
    images = backend.generate(records, enc)
    expected = _by_hand(family, cfg, records, [r.text for r in records])
    assert (images - expected).abs().max() < 1e-4
    assert (images[0] - images[1]).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_guidance_uses_the_negative_prompt_and_its_pooled_embedding(tmp_path, teacher, family):
    cfg = fast_config(tmp_path, f"synth.model=tiny:{family}", "synth.guidance_scale=3.0",
                      "synth.negative_prompt=blurry", "prompts.method=plain")
    backend = load_backend(cfg, teacher)
    assert backend.uses_negative and backend.negative_pooled is not None
    records, enc = records_and_encoding(cfg, backend, KEYS[:2])
    a = backend.generate(records, enc)
    assert (a - _by_hand(family, cfg, records, [r.text for r in records], "blurry")).abs().max() < 1e-4
    other = backend.text_encoder.encode_text(["a bright colourful photo"])
    backend.negative_embeds, backend.negative_pooled = other.hidden_states, other.pooled
    assert (backend.generate(records, enc) - a).flatten(1).abs().amax(1).min() > 1e-3


def test_sdxl_empty_negative_prompt_is_zeros_as_the_pipeline_makes_it(tmp_path, teacher):
    backend = load_backend(fast_config(tmp_path, "synth.model=tiny:sdxl", "synth.guidance_scale=2.0"), teacher)
    assert backend.pipe.config.force_zeros_for_empty_prompt
    assert not backend.negative_embeds.any() and not backend.negative_pooled.any()


def test_flux_guidance_is_distilled_and_takes_no_negative_prompt(tmp_path, teacher):
    backend = load_backend(fast_config(tmp_path, "synth.model=tiny:flux", "synth.guidance_scale=3.5",
                                "synth.negative_prompt=blurry"), teacher)
    assert not backend.uses_negative and backend.negative_embeds is None


def test_memory_options_reach_the_vae_and_offload_refuses_a_cpu(tmp_path, teacher):
    backend = load_backend(fast_config(tmp_path, "synth.model=tiny:sdxl", "synth.vae_tiling=true", "synth.vae_slicing=true"),
                    teacher)
    assert backend.pipe.vae.use_tiling and backend.pipe.vae.use_slicing
    plain = load_backend(fast_config(tmp_path, "synth.model=tiny:sdxl"), teacher)
    assert not plain.pipe.vae.use_tiling and not plain.pipe.vae.use_slicing
    for mode in ("model", "sequential"):
        with pytest.raises(UserError, match=f"synth.offload={mode} moves components to a GPU"):
            load_backend(fast_config(tmp_path, "synth.model=tiny:flux", f"synth.offload={mode}"), teacher)


def test_offload_on_a_cpu_is_refused_by_dfkd_run_before_any_stage(tmp_path, capsys):
    from dfkd.cli import main

    assert main(["run", "--config", str(TINY_YAML), f"output_dir={tmp_path}", "synth.device=cpu",
                 "synth.model=tiny:sdxl", "synth.offload=model"]) == 2
    err = capsys.readouterr().err
    assert "synth.offload=model moves components to a GPU" in err and "Traceback" not in err
    assert not (tmp_path / "prompts").exists()  # nothing learned, nothing generated


def test_a_resolution_the_family_cannot_make_names_the_multiple(tmp_path, teacher):
    with pytest.raises(UserError, match=r"synth.resolution=36 cannot be produced by 'tiny:flux' \(needs a multiple"):
        load_backend(fast_config(tmp_path, "synth.model=tiny:flux", "synth.resolution=36"), teacher)
