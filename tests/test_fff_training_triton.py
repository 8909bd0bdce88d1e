"""The Triton backend of the FFF training Function, checked on CPU under the Triton interpreter.

The cases live in triton_train_cases.py and run in a child pytest with TRITON_INTERPRET=1:
Triton reads the variable when it is imported, so setting it here would switch this whole
session to the interpreter (and skip the check that CPU tensors are refused without it).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_triton_training_backend_under_interpreter():
    pytest.importorskip("triton")
    cases = Path(__file__).with_name("triton_train_cases.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)],
        cwd=cases.parent, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
