"""README.md runs as written: every ```bash block is either run here, in order, or says on its first line
``# needs: ...`` what it needs that a fresh clone offline does not have (real weights, real data, a GPU, ...).

The runnable blocks are run from a scratch folder that sees the repository's ``configs/`` and ``bench/``, with
settings small enough for a test appended to every ``dfkd`` command (the same for all, so commands that share an
``output_dir`` agree on the config). ``dfkd`` runs in this process, ``python -m`` and ``accelerate launch`` in a
child process, and ``make TARGET`` is checked to be a target of the Makefile (the targets themselves are what
``make test`` and ``make demo`` run). The ```python blocks must compile and import only names that exist.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
#: appended to every dfkd command the test runs (later overrides win): a few images and steps
TINY = ["synth.images_per_class=2", "synth.progress=false", "prompts.contrastive.steps=3",
        "prompts.contrastive.num_styles=4", "prompts.contrastive.checkpoint_every=3", "distill.max_steps=2",
        "distill.checkpointing_steps=2", "distill.batch_size=4", "synth.clip_guided.iterations=2"]


def blocks(language: str) -> list[tuple[int, str]]:
    """(line number, body) of every fenced block of ``language`` in README.md."""
    text = README.read_text()
    return [(text[:m.start()].count("\n") + 1, m.group(1))
            for m in re.finditer(rf"^```{language}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)]


def commands(body: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            out.append(line)
    return out


def needs(body: str) -> str | None:
    first = body.splitlines()[0].strip() if body.strip() else ""
    m = re.match(r"#\s*needs:\s*(.*)", first)
    return m.group(1).strip() if m else None


def test_every_shell_block_is_runnable_or_says_what_it_needs():
    found = blocks("bash")
    assert len(found) >= 5, "README.md lost its shell blocks"
    for line, body in found:
        reason = needs(body)
        assert reason is None or len(reason) > 8, f"README.md:{line}: '# needs:' must say what the block needs"
        assert commands(body), f"README.md:{line}: an empty shell block"
    assert sum(needs(b) is None for _, b in found) >= 3, "no runnable shell block left in README.md"


def _scratch(tmp_path: Path) -> Path:
    work = tmp_path / "clone"
    work.mkdir()
    for name in ("configs", "bench", "Makefile"):
        (work / name).symlink_to(REPO / name)
    return work


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.MULTILINE))


def _run_line(line: str, work: Path, env: dict) -> None:
    from dfkd.cli import main

    argv = shlex.split(line)
    head = argv[0]
    if head == "make":
        target = argv[1] if len(argv) > 1 and "=" not in argv[1] else "all"
        assert target in _make_targets(), f"`{line}`: the Makefile has no target {target!r}"
        return
    if head == "dfkd":
        extra = TINY if argv[1] in {"run", "synth", "distill", "eval", "prompts", "config"} else []
        code = main([*argv[1:], *extra])
        assert code == 0, f"`{line}` exited with {code}"
        return
    if head in ("python", "python3") or head == "accelerate":
        if head != "accelerate":
            argv = [sys.executable, *argv[1:]]
        else:
            argv = [sys.executable, "-m", "accelerate.commands.launch", *argv[2:]]
        modules = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-m"]
        if modules and modules[-1] in ("synth", "distill"):  # a stage launched as a module: python -m / accelerate
            argv += TINY
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, f"`{line}` exited with {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        return
    raise AssertionError(f"README.md runs `{head}`, which this test does not know how to run; mark its block "
                         "'# needs: ...' or teach the test")


@pytest.mark.slow
def test_the_runnable_shell_blocks_run_in_order_from_a_fresh_folder(tmp_path, monkeypatch):
    work = _scratch(tmp_path)
    monkeypatch.chdir(work)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    ran = 0
    for line_no, body in blocks("bash"):
        if needs(body) is not None:
            continue
        for line in commands(body):
            try:
                _run_line(line, work, env)
            except AssertionError as e:
                raise AssertionError(f"README.md block at line {line_no}: {e}") from None
            ran += 1
    assert ran >= 10


def test_python_blocks_compile_and_import_what_exists():
    found = blocks("python")
    assert found, "README.md lost its Python example"
    for line, body in found:
        tree = ast.parse(body, filename=f"README.md:{line}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"README.md:{line}: {node.module} has no {alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
