import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures import REPO_ROOT

from dfkd.errors import UserError
from dfkd.models import load_pretrained, resolve_model_id
from dfkd.tiny import build_all, make_clip_tokenizer


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


def test_make_tiny_cli_writes_loadable_models(tmp_path):
    out = tmp_path / "tiny"
    proc = subprocess.run([sys.executable, "-m", "dfkd", "make-tiny", str(out)], cwd=REPO_ROOT,
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    from diffusers import AutoencoderKL, StableDiffusionPipeline, VQModel
    from transformers import CLIPModel, CLIPProcessor

    clip = CLIPModel.from_pretrained(out / "clip")
    processor = CLIPProcessor.from_pretrained(out / "clip")
    pipe = StableDiffusionPipeline.from_pretrained(out / "sd")
    vq = VQModel.from_pretrained(out / "vqgan")
    vae = AutoencoderKL.from_pretrained(out / "vae")
    assert clip.config.projection_dim == 16
    assert processor.tokenizer.model_max_length == 77
    assert pipe.text_encoder.config.hidden_size == pipe.unet.config.cross_attention_dim

    # the SD pipeline really generates, from text, at its native size, in [0, 1]
    images = pipe(["a dog", "a sketch of a cat"], num_inference_steps=2, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    # the autoencoders round-trip shapes
    x = torch.rand(2, 3, 32, 32)
    assert vq.decode(vq.encode(x).latents).sample.shape == x.shape
    assert vae.decode(vae.encode(x).latent_dist.mean).sample.shape == x.shape
    # CLIP text features through the real processor
    feats = clip.get_text_features(**processor.tokenizer(["a dog"], return_tensors="pt", padding=True))
    feats = getattr(feats, "pooler_output", feats)
    assert feats.shape == (1, 16)

    # building again gives bit-identical weights
    again = build_all(tmp_path / "again")
    for name in ("clip", "sd", "vqgan", "vae"):
        first, second = _digest(out / name), _digest(again[name])
        assert first and first == second, name


def test_tokenizer_is_real_clip_bpe():
    from open_clip.tokenizer import SimpleTokenizer  # the reference OpenAI CLIP BPE implementation

    tok = make_clip_tokenizer()
    text = "a watercolor painting of a giraffe"
    ids = tok(text).input_ids
    assert ids[0] == 49406 and ids[-1] == 49407
    assert ids[1:-1] == SimpleTokenizer().encode(text)
    assert len(tok) == 49408
    for word in ("origami", "embroidery", "pixel art", "infrared photo", "ukiyo-e"):
        assert tok(word).input_ids[1:-1] == SimpleTokenizer().encode(word)


def test_tiny_ids_resolve_and_cache(tiny_dir):
    first = resolve_model_id("tiny:clip")
    assert Path(first).is_dir() and resolve_model_id("tiny:clip") == first
    assert resolve_model_id("openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"
    with pytest.raises(UserError, match="valid tiny models are: tiny:clip, tiny:sd, tiny:sdxl, tiny:sd3, tiny:flux, tiny:vqgan, tiny:vae"):
        resolve_model_id("tiny:nope")


def test_unloadable_model_is_a_user_error(tmp_path):
    from transformers import CLIPModel

    with pytest.raises(UserError, match="cannot load .*'someone/does-not-exist'.*offline"):
        load_pretrained(CLIPModel, "someone/does-not-exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="local folder"):
        load_pretrained(CLIPModel, str(tmp_path / "empty"))
    with pytest.raises(UserError, match="no such folder") as info:
        load_pretrained(CLIPModel, "runs/digits/not-built")  # two slashes: a path, never a Hub id
    assert "hf download" not in str(info.value)


def test_a_pipeline_folder_missing_its_tokenizer_is_refused_not_loaded_blank(tmp_path, tiny_dir):
    """transformers loads a missing tokenizer subfolder as a blank tokenizer (every word unknown): a pipeline copied
    without its tokenizer/ must fail in one line, not encode every prompt as unknown tokens."""
    import shutil

    from transformers import CLIPTokenizer

    folder = tmp_path / "sd"
    shutil.copytree(resolve_model_id("tiny:sd"), folder)
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(UserError, match=r"cannot load tokenizer from local folder .* \(it has no tokenizer/ folder\)"):
        load_pretrained(CLIPTokenizer, str(folder), what="tokenizer", subfolder="tokenizer")
    (folder / "tokenizer").mkdir()  # an empty folder is no better
    with pytest.raises(UserError, match="it has no tokenizer/ folder"):
        load_pretrained(CLIPTokenizer, str(folder), what="tokenizer", subfolder="tokenizer")
    assert len(load_pretrained(CLIPTokenizer, "tiny:sd", what="tokenizer", subfolder="tokenizer")) == 49408


def test_a_hub_id_with_the_hub_unreachable_fails_fast_with_the_offline_message(monkeypatch):
    """Without HF_HUB_OFFLINE and without a network, a Hub id once cost half a minute of retries and a vague
    message; now the endpoint is probed once and the load goes to the local cache only."""
    import time

    from huggingface_hub import constants
    from transformers import CLIPModel

    import dfkd.models

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setattr(dfkd.models, "_HUB_REACHABLE", None)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    start = time.perf_counter()
    with pytest.raises(UserError) as info:
        load_pretrained(CLIPModel, "someone/not-cached")
    assert time.perf_counter() - start < 10
    assert str(info.value) == ("cannot load model 'someone/not-cached': the Hub is offline (HF_HUB_OFFLINE=1, or it "
                               "cannot be reached) and it is not in the local cache; download it first "
                               "(`hf download someone/not-cached`) or pass a local folder")
    assert dfkd.models.hub_reachable() is False
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setattr(dfkd.models, "_HUB_REACHABLE", None)
    assert dfkd.models.hub_reachable() is True  # a proxy may reach what a direct probe cannot: not judged


def test_outputs_of_random_weight_models_say_they_are_meaningless():
    from dfkd.models import random_weights_note

    assert random_weights_note("openai/clip-vit-base-patch32", "digits:sd", None) is None
    note = random_weights_note("tiny:clip", "tiny:sd", "tiny:clip")
    assert note.startswith("tiny:clip, tiny:sd have random weights") and "meaningless by design" in note
