"""The README's commands, run exactly as printed.

Every command in README.md's code blocks runs here: each line of a ``bash`` block in bash (so a
pipe is tested as a pipe; ``pipefail`` makes a failing first stage fail the line), each ``python``
block as one script. They run in order, from a fresh copy of the repository (the committed records
included, ignored outputs left out) with ``.venv`` linked in, so nothing is written to the checkout.
`NOT_RUN` names the few commands that are not run, each with its reason; a command that is changed
in the README is therefore run again automatically. Needs WikiText-2 (EASE_DATA_DIR) for the smoke
runs; about two minutes on two cores.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# Commands the README prints that are not run here, without their trailing comments.
NOT_RUN = {
    "make book": "renders and builds the whole book (the book tests do that)",
    "make test": "runs this test suite",
    "make reproduce": "retrains every grid: hours",
    "source .venv/bin/activate": "sets up the shell for the next line (the test puts .venv/bin on PATH)",
    "jupyter-book build book": "tests/test_book_build.py runs it as printed, after the lab notebooks are rendered",
    ".venv/bin/python -m ease.pipeline --grid exp5-6 --seeds 3": "trains 15 runs; its --dry-run form runs here",
    ".venv/bin/python -m ease.pipeline --book": "trains every grid the book reads; its --dry-run form runs here",
    ".venv/bin/python -m ease.pipeline --grid examples/grid.yaml": "trains 10 runs; its --dry-run form runs here",
    ".venv/bin/python -m ease.pipeline --grid exp5-6 --scheduler tcp://host:8786": "needs a Dask cluster",
    ".venv/bin/python benchmarks/bench_train.py --against d75f64a":
        "16 training processes, about 15 minutes (a benchmark; tests/test_benchmarks.py checks its counting)",
}
# Not copied into the workspace: outputs and environments (as .gitignore), and the repository's history.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "_build", "__pycache__", ".pytest_cache", "*.egg-info",
                                    "*.ipynb", "*.pt", "executed", "smoke", "build")


def readme_commands(text: str) -> list[tuple[str, str]]:
    """(language, command) for each command of the README's bash and python code blocks, in order."""
    commands = []
    for language, body in re.findall(r"^```(bash|python)\n(.*?)^```", text, flags=re.M | re.S):
        if language == "python":
            commands.append((language, body))
            continue
        for line in body.replace("\\\n", "").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append((language, line.strip()))
    return commands


def without_comment(command: str) -> str:
    return re.sub(r"\s+#.*$", "", command)


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))
TO_RUN = [(language, command) for language, command in COMMANDS if without_comment(command) not in NOT_RUN]


def test_the_readme_prints_the_commands_it_promises():
    printed = {without_comment(command) for _, command in COMMANDS}
    stale = sorted(set(NOT_RUN) - printed)
    assert not stale, f"NOT_RUN names commands the README no longer prints: {stale}"
    # the ways to run things that the README documents, each present in a form this test runs
    run = [command for _, command in TO_RUN]
    assert any("jupytext" in c and "papermill -" in c and "train_run.py" in c for c in run)
    assert any("papermill -" in c and "threshold_analysis.py" in c for c in run)
    assert any("ease.pipeline" in c and "--dry-run" in c for c in run)
    assert any(language == "python" and "ease.run(" in command for language, command in TO_RUN)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A fresh copy of the repository with the project's .venv linked in."""
    root = tmp_path_factory.mktemp("repo") / "main"
    shutil.copytree(REPO, root, ignore=NOT_COPIED, symlinks=True)
    (root / ".venv").symlink_to(REPO / ".venv")
    return root


@pytest.mark.parametrize("language, command", TO_RUN,
                         ids=[without_comment(c.splitlines()[0])[:90] for _, c in TO_RUN])
def test_readme_command_runs_as_printed(language, command, workspace):
    if language == "python":
        argv = [str(workspace / ".venv" / "bin" / "python"), "-c", command]
    else:
        argv = ["bash", "-o", "pipefail", "-c", command]
    proc = subprocess.run(argv, cwd=workspace, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (f"README command failed (exit {proc.returncode}):\n{command}\n"
                                  f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}")
