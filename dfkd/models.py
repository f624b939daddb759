"""Model ids: ``tiny:*`` and ``digits:*`` resolve to locally built models, anything else goes to ``from_pretrained``.

Every place that accepts a model id calls :func:`resolve_model_id` and loads through
:func:`load_pretrained`, so a Hub id (``openai/clip-vit-base-patch32``), a local folder and
``tiny:clip`` all take the same, real ``from_pretrained`` path.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from .errors import UserError

TINY_PREFIX = "tiny:"
#: OpenAI CLIP's pixel mean and std (RGB, for [0, 1] inputs)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def cache_path(env_var: str, hf_home_sub: str, home_sub: str) -> Path:
    """``$env_var``, else ``$HF_HOME/hf_home_sub``, else ``~/.cache/dfkd/home_sub``."""
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / hf_home_sub
    return Path.home() / ".cache" / "dfkd" / home_sub


def random_weights_note(*model_ids: str | None) -> str | None:
    """One sentence for every output made with a ``tiny:*`` model (random weights, built for the tests and the
    plumbing demo): its numbers and images mean nothing, by design. None when no such model is involved."""
    tiny = sorted({m for m in model_ids if isinstance(m, str) and m.startswith(TINY_PREFIX)})
    if not tiny:
        return None
    return (f"{', '.join(tiny)} {'has' if len(tiny) == 1 else 'have'} random weights (offline test models): these "
            "numbers and images are meaningless by design; they only show that the pipeline runs")


def resolve_model_id(model_id: str) -> str:
    """``tiny:NAME`` / ``digits:NAME`` -> the local folder of that model (built on first use and cached, see
    :mod:`dfkd.tiny` and :mod:`dfkd.digits`); else ``model_id`` unchanged."""
    if not isinstance(model_id, str) or not model_id:
        raise UserError(f"model id {model_id!r} is empty; give a Hub id, a local folder or tiny:clip")
    if model_id.startswith("digits:"):
        from . import digits

        return str(digits.ensure(model_id[len(digits.PREFIX):]))
    if not model_id.startswith(TINY_PREFIX):
        return model_id
    from .tiny import TINY_BUILDERS, ensure_tiny

    name = model_id[len(TINY_PREFIX):]
    if name not in TINY_BUILDERS:
        valid = ", ".join(TINY_PREFIX + n for n in TINY_BUILDERS)
        raise UserError(f"unknown tiny model '{model_id}'; valid tiny models are: {valid}")
    # built once in $DFKD_TINY_DIR, else $HF_HOME/dfkd-tiny, else ~/.cache/dfkd/tiny
    return str(ensure_tiny(name, cache_path("DFKD_TINY_DIR", "dfkd-tiny", "tiny")))


def locate_model(model_id: str) -> tuple[bool | None, str]:
    """Where ``model_id`` would load from, found without loading anything: ``(True, where)`` when it is there,
    ``(False, why)`` when it cannot load, ``(None, note)`` when only the network can tell."""
    if model_id.startswith((TINY_PREFIX, "digits:")):
        from . import digits
        from .tiny import TINY_BUILDERS

        prefix, names = (TINY_PREFIX, TINY_BUILDERS) if model_id.startswith(TINY_PREFIX) else (digits.PREFIX, digits.NAMES)
        if model_id[len(prefix):] not in names:
            return False, f"unknown; valid: {', '.join(prefix + n for n in names)}"
        return True, "built on this machine on first use"
    path = Path(model_id).expanduser()
    if path.is_dir():
        ok = (path / "config.json").is_file() or (path / "model_index.json").is_file()
        return (True, "a local folder") if ok else (False, "a local folder without config.json or model_index.json")
    if _looks_like_path(model_id):
        return False, "no such folder"
    from huggingface_hub import try_to_load_from_cache

    for name in ("model_index.json", "config.json"):
        if isinstance(try_to_load_from_cache(model_id, name), str):
            return True, "in the local Hugging Face cache"
    if _env_offline() or not hub_reachable():
        return False, "not in the local Hugging Face cache, and the Hub is offline (HF_HUB_OFFLINE=1, or it cannot be reached)"
    return None, "not in the local cache: downloaded from the Hub on first use"


def _looks_like_path(model_id: str) -> bool:
    """True for ids that can only be local paths (``./x``, ``/x``, ``~/x``, ``a/b/c``), never a Hub ``owner/name``."""
    return model_id.startswith((".", "/", "~")) or model_id.count("/") >= 2 or "\\" in model_id


_HUB_REACHABLE: bool | None = None


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hub's endpoint takes a connection within ``timeout`` seconds (asked once per process; always
    True behind a proxy, which this probe cannot see through). Without it, an unreachable Hub costs half a minute of
    retries before any error."""
    global _HUB_REACHABLE
    if _HUB_REACHABLE is None:
        import socket
        import threading
        from urllib.parse import urlparse

        from huggingface_hub import constants

        if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
            _HUB_REACHABLE = True
            return True
        url = urlparse(constants.ENDPOINT)
        answer: list[bool] = []

        def probe() -> None:  # in a thread: a name lookup can block past any socket timeout
            try:
                socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
                answer.append(True)
            except OSError:
                answer.append(False)

        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        thread.join(timeout + 0.5)
        _HUB_REACHABLE = bool(answer and answer[0])
    return _HUB_REACHABLE


#: what huggingface_hub says each time diffusers passes it an argument it deprecated (nothing a user can act on)
DIFFUSERS_HUB_NOTICE = ".*local_dir_use_symlinks"


def loads_offline(model_id: str) -> bool:
    """Whether ``model_id`` must load from local files only: the Hub is switched off, or it is a Hub id and the Hub
    cannot be reached (so a load fails within seconds instead of retrying)."""
    return _env_offline() or (not Path(resolve_model_id(model_id)).exists() and not _looks_like_path(model_id)
                              and not hub_reachable())


def load_pretrained(cls: Any, model_id: str, *, what: str = "model", **kwargs: Any) -> Any:
    """``cls.from_pretrained(resolve_model_id(model_id), **kwargs)`` with a one-line error when it cannot load.

    A Hub id when the Hub cannot be reached loads from the local cache only (``local_files_only``), so it fails
    within seconds with the same message as under ``HF_HUB_OFFLINE=1``. ``trust_remote_code`` is never turned on
    here; callers pass it only when the user asked.
    """
    path = resolve_model_id(model_id)
    sub = kwargs.get("subfolder")
    if sub and Path(path).is_dir() and not any((Path(path) / sub).glob("*")):
        # transformers' tokenizers load a missing subfolder as a blank tokenizer instead of failing: refuse it here
        raise UserError(f"cannot load {what} from local folder '{path}' (it has no {sub}/ folder); check that it was "
                        "written with save_pretrained")
    offline = loads_offline(model_id)
    if offline:
        kwargs = {**kwargs, "local_files_only": True}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=DIFFUSERS_HUB_NOTICE)
            return cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        if Path(path).exists():
            raise UserError(
                f"cannot load {what} from local folder '{path}' ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                "check that it was written with save_pretrained"
            ) from exc
        if _looks_like_path(model_id):
            raise UserError(f"cannot load {what} '{model_id}': no such folder (a Hub id is owner/name); "
                            "check the path, or build it first") from exc
        hint = (
            "the Hub is offline (HF_HUB_OFFLINE=1, or it cannot be reached) and it is not in the local cache; "
            f"download it first (`hf download {model_id}`) or pass a local folder"
            if offline
            else "check the id on the Hugging Face Hub, your network and your login, or pass a local folder"
        )
        raise UserError(f"cannot load {what} '{model_id}': {hint}") from exc
