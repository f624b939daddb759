"""Publishing a dataset folder to the Hugging Face Hub, shard by shard.

Files are streamed from disk (never the whole image set in memory), one commit per data shard, the
card last (so a half-finished upload is visible as such). The token comes from ``HF_TOKEN`` or the
``hf auth login`` cache through ``huggingface_hub`` itself; this module never reads, prints or
writes it.
"""

from __future__ import annotations

from pathlib import Path

from dfkd import schema
from dfkd.errors import UserError


def upload_plan(folder: Path) -> list[str]:
    """Relative paths to upload: the data shards, then the other public files, the card last.

    Hidden files (resume state, temp files) stay local.
    """
    folder = Path(folder)
    files = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
    files = [f for f in files if not any(part.startswith(".") for part in f.split("/"))]
    data = [f for f in files if f.startswith(schema.DATA_DIR + "/") and f.endswith(".parquet")]
    rest = [f for f in files if f not in data and f != schema.CARD_NAME]
    return data + rest + ([schema.CARD_NAME] if schema.CARD_NAME in files else [])


def _call(what: str, fn, *args, **kwargs):
    """Run a Hub call; a failure (offline, no login, no rights) becomes one line that never shows the token."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise UserError(f"cannot {what} ({type(exc).__name__}); check the network and your login "
                        "(HF_TOKEN or `hf auth login`); re-running uploads everything again") from exc


def push_dataset_folder(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                        log=print) -> list[str]:
    """Upload ``folder`` (written by ``dfkd synth``) to dataset repo ``repo_id``; returns the uploaded paths."""
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    if not (folder / schema.CARD_NAME).is_file() or not any((folder / schema.DATA_DIR).glob("*.parquet")):
        raise UserError(f"'{folder}' is not a finished dataset folder (no {schema.CARD_NAME} or no "
                        f"{schema.DATA_DIR}/*.parquet); run `dfkd synth` to completion first")
    if repo_id.count("/") != 1:
        raise UserError(f"hub repo '{repo_id}' must be of the form user/name")
    api = HfApi()  # the token: HF_TOKEN or the `hf auth login` cache, read by huggingface_hub itself
    _call(f"create or reach dataset repo '{repo_id}'", api.create_repo, repo_id, repo_type="dataset",
          private=private, exist_ok=True)
    if revision:
        _call(f"create branch '{revision}' of '{repo_id}'", api.create_branch, repo_id, branch=revision,
              repo_type="dataset", exist_ok=True)
    paths = upload_plan(folder)
    for i, rel in enumerate(paths, 1):
        _call(f"upload {rel} to '{repo_id}'", api.create_commit, repo_id, repo_type="dataset", revision=revision,
              operations=[CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(folder / rel))],
              commit_message=f"dfkd synth: upload {rel} ({i}/{len(paths)})")
        log(f"uploaded {rel} ({i}/{len(paths)})")
    log(f"dataset at https://huggingface.co/datasets/{repo_id}")
    return paths
