"""In CI (CI=true) a skipped `ci_required` test fails the run; elsewhere it is a plain skip."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PROBE = '''
import pytest

@pytest.mark.ci_required
@pytest.mark.skipif(True, reason="the thing it needs is missing")
def test_needs_a_thing():
    pass
'''


def run_probe(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(PROBE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_required_skip_fails_in_ci(tmp_path):
    proc = run_probe(tmp_path, "true")
    assert proc.returncode != 0
    assert "skipped in CI, where it must run: " in proc.stdout and "the thing it needs is missing" in proc.stdout


def test_a_required_skip_is_a_skip_elsewhere(tmp_path):
    proc = run_probe(tmp_path, None)
    assert proc.returncode == 0, proc.stdout
    assert "1 skipped" in proc.stdout
