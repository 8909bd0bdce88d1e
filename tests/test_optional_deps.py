"""ultracram imports and runs with only the packages a bare GPU machine has (no datasets,
zstandard, psutil, wandb): a missing optional package is named only when its feature is used."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKER = """
import sys
BLOCKED = {"datasets", "zstandard", "psutil", "wandb"}
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Block())
"""
SCRIPT = """
import importlib, pkgutil, sys
import ultracram
for m in pkgutil.walk_packages(ultracram.__path__, "ultracram."):
    if ".resources" not in m.name and m.name != "ultracram.__main__":
        importlib.import_module(m.name)
from ultracram.errors import MissingDependencyError
from ultracram.data.text import iter_file_documents
try:
    next(iter_file_documents(sys.argv[1]))
except MissingDependencyError as e:
    print("MESSAGE", e)
"""


def test_everything_imports_without_optional_packages(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    (tmp_path / "corpus.txt.zst").write_bytes(b"not really zstd")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")])}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "corpus.txt.zst")], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "MESSAGE reading corpus.txt.zst (zstd-compressed) needs the Python package 'zstandard'" in r.stdout
    assert "pip install zstandard" in r.stdout
    help_run = subprocess.run([sys.executable, "-m", "ultracram", "--help"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert help_run.returncode == 0 and "selfcheck" in help_run.stdout
