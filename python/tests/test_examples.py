"""The examples, run as programs against the real server: each checks its own claim and
exits non-zero when it fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize(
    "script, claim",
    [
        ("two_agents.py", "nothing was lost"),
        ("lww_loses.py", "acknowledged work was lost"),
    ],
)
def test_example(url: str, script: str, claim: str) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("CONCORD_URL", None)
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), url],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert claim in done.stdout


def test_examples_take_the_url_from_the_environment(url: str) -> None:
    env = {**os.environ, "CONCORD_URL": url, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "two_agents.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
