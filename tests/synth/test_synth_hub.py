"""Publishing: huggingface_hub mocked where it would reach the network; the token must never leak."""

from __future__ import annotations

import logging

import pytest
from synth_helpers import fast_args

from dfkd.cli import main

TOKEN = "hf_dfkdTestSecretToken0123456789abcdef"


@pytest.fixture
def hub(monkeypatch):
    """Record what HfApi would send: repos created and, per commit, the uploaded files' bytes."""
    from huggingface_hub import HfApi

    sent = {"repos": [], "commits": [], "branches": []}

    def create_repo(self, repo_id, **kwargs):
        sent["repos"].append((repo_id, kwargs.get("repo_type"), kwargs.get("private")))

    def create_commit(self, repo_id, operations, **kwargs):
        files = {}
        for op in operations:
            src = op.path_or_fileobj
            assert isinstance(src, str), "files are streamed from disk, not held in memory"
            with open(src, "rb") as f:
                files[op.path_in_repo] = f.read()
        sent["commits"].append((repo_id, kwargs.get("repo_type"), kwargs.get("commit_message"), files))

    def create_branch(self, repo_id, *, branch, **kwargs):
        sent["branches"].append((repo_id, branch))

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return sent


def _public_files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("hub")
    assert main(fast_args(out)) == 0
    return out


def test_synth_push_to_hub_uploads_the_folder_shard_by_shard(finished, hub, capsys, caplog):
    tmp_path = finished
    caplog.set_level(logging.DEBUG)
    # the same command with publishing on: nothing to generate, then the upload
    assert main(fast_args(tmp_path, "synth.push_to_hub=true", "synth.hub_repo=me/tiny-synth")) == 0
    folder = tmp_path / "dataset"
    assert hub["repos"] == [("me/tiny-synth", "dataset", False)]
    uploaded = {}
    for repo, repo_type, _, files in hub["commits"]:
        assert (repo, repo_type, len(files)) == ("me/tiny-synth", "dataset", 1)  # one file per commit
        uploaded.update(files)
    assert uploaded == _public_files(folder)  # exactly the folder's public files, byte for byte
    assert list(hub["commits"][-1][3]) == ["README.md"]  # the card last
    assert not any(name.startswith(".") for name in uploaded)  # resume state stays local
    out = capsys.readouterr()
    logs = out.out + out.err + caplog.text
    assert TOKEN not in logs
    assert all(TOKEN.encode() not in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_push_dataset_command_and_its_errors(finished, hub, capsys):
    tmp_path = finished
    assert main(["push-dataset", str(tmp_path / "dataset"), "me/again", "--private", "--revision", "dev"]) == 0
    assert hub["repos"] == [("me/again", "dataset", True)] and hub["branches"] == [("me/again", "dev")]
    assert main(["push-dataset", str(tmp_path), "me/again"]) == 2  # not a dataset folder
    assert main(["push-dataset", str(tmp_path / "dataset"), "no-namespace"]) == 2
    assert TOKEN not in capsys.readouterr().err


def test_offline_upload_fails_with_one_line_and_no_token(finished, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # HF_HUB_OFFLINE=1: the real client refuses before any request
    assert main(["push-dataset", str(finished / "dataset"), "me/offline"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot create or reach dataset repo 'me/offline'" in err
    assert TOKEN not in err


def test_the_cards_loading_snippet_loads_the_dataset(finished):
    """The card's `load_dataset(...)` line names a real place (no placeholder) and loads every row from it."""
    import re

    import datasets
    import pyarrow.parquet as pq

    folder = finished / "dataset"
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "PATH_OR_REPO" not in card
    where = re.search(r'load_dataset\("([^"]+)", split="train"\)  # this folder', card).group(1)
    ds = datasets.load_dataset(where, split="train", cache_dir=str(finished / "hf-cache"))
    n = sum(pq.ParquetFile(p).metadata.num_rows for p in (folder / "data").glob("*.parquet"))
    assert len(ds) == n > 0
