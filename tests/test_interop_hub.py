"""ultracram import --source HUB_ID: a Hugging Face hub id resolved through huggingface_hub's cache.

No network: the tests write the hub cache themselves, in the layout huggingface_hub's downloads
leave (``models--ORG--NAME/{blobs,snapshots/<commit>,refs/main}``, checked with its own
``scan_cache_dir``), and set HF_HOME / HF_HUB_OFFLINE for the test only. The online call is
checked with a stand-in for ``snapshot_download`` that records what it is asked for.
"""

import hashlib
import json
import os
import shutil
import sys

import pytest
import torch

from conftest import V, bert_vocab
from ultracram.checkpoint import load_checkpoint
from ultracram.cli import main
from ultracram.errors import MissingDependencyError, UltracramError
from ultracram.interop.importer import import_checkpoint, looks_like_hub_id
from ultracram.interop.weights import ConversionError

transformers = pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")


def _save(model, directory, safetensors=True):
    """A hub repo's files: config.json, the weights, and BERT's vocab.txt."""
    model.save_pretrained(directory)
    if not safetensors:  # an older repo: PyTorch weights only
        (directory / "model.safetensors").unlink()
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    (directory / "vocab.txt").write_text("\n".join(bert_vocab(V)) + "\n")
    return directory


def write_hub_cache(hub_cache, repo_id, files):
    """Put the files of the directory ``files`` into the hub cache ``hub_cache`` as a download by
    huggingface_hub leaves them: content-addressed blobs, ``snapshots/<commit>/`` linking to them,
    and ``refs/main`` naming the commit. Returns the snapshot directory."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in sorted(files.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        try:
            os.symlink(os.path.relpath(blob, snapshot), snapshot / f.name)
        except OSError:  # no symbolic links here: huggingface_hub copies then, and so do we
            shutil.copyfile(blob, snapshot / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An empty HF_HOME, offline, for this test only (huggingface_hub itself read the environment
    at import: the importer must read it as it is now)."""
    home = tmp_path / "hf_home"
    (home / "hub").mkdir(parents=True)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def _same_logits(hf_model, checkpoint):
    ours = load_checkpoint(checkpoint).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, V, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0
    types = torch.randint(0, 2, (3, 20), generator=g)
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = ours(ids, attention_mask=mask, token_type_ids=types).logits
    return (got[mask.bool()] - ref[mask.bool()]).abs().max() < 1e-4


@pytest.mark.parametrize(
    "repo_id,safetensors",
    [("ultracram-test/tiny-bert", True), ("tiny-bert", False)],
    ids=["org-id-safetensors", "bare-id-bin"],
)
def test_import_by_hub_id_from_the_cache_offline(hf_bert, tmp_path, hf_home, repo_id, safetensors, capsys):
    snapshot = write_hub_cache(hf_home / "hub", repo_id, _save(hf_bert, tmp_path / "repo", safetensors))
    cached = huggingface_hub.scan_cache_dir(hf_home / "hub")  # huggingface_hub reads our cache as its own
    assert [(r.repo_id, [rev.commit_hash for rev in r.revisions]) for r in cached.repos] == [
        (repo_id, [snapshot.name])
    ]
    assert main(["import", "--source", repo_id, "--out", str(tmp_path / "uc")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "uc")
    assert _same_logits(hf_bert, tmp_path / "uc")
    meta = json.loads((tmp_path / "uc" / "config.json").read_text())
    assert meta["extra"]["imported_from"] == repo_id and meta["extra"]["hub_commit"] == snapshot.name
    assert meta["extra"]["import_format"] == "hf-bert"
    assert meta["tokenizer"]["vocab_size"] == V  # the cached vocab.txt became a tokenizer.json
    # a second import into the same place is an earlier output: refused without --overwrite
    with pytest.raises(UltracramError, match="--overwrite"):
        import_checkpoint(repo_id, tmp_path / "uc")
    import_checkpoint(repo_id, tmp_path / "uc", overwrite=True)


def test_not_cached_offline_is_a_one_line_error(tmp_path, hf_home, capsys):
    repo_id = "someone/not-cached-bert"
    with pytest.raises(ConversionError) as err:
        import_checkpoint(repo_id, tmp_path / "uc")
    message = str(err.value)
    assert "\n" not in message
    for part in (repo_id, "not in the cache", str(hf_home / "hub"), "HF_HUB_OFFLINE is set", "network access",
                 "HF_HOME"):  # fmt: skip
        assert part in message, part
    assert not (tmp_path / "uc").exists()
    assert main(["import", "--source", repo_id, "--out", str(tmp_path / "uc")]) == 1
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and repo_id in err_lines[0] and "not in the cache" in err_lines[0]


def test_cached_without_weights_says_so(tmp_path, hf_home, hf_bert):
    """A cache that holds only part of the repo (e.g. after AutoConfig alone) is not imported."""
    repo = _save(hf_bert, tmp_path / "repo")
    (repo / "model.safetensors").unlink()
    write_hub_cache(hf_home / "hub", "org/config-only", repo)
    with pytest.raises(
        ConversionError, match=r"org/config-only has no model\.safetensors or pytorch_model\.bin"
    ):
        import_checkpoint("org/config-only", tmp_path / "uc")


def test_online_asks_only_for_what_an_import_reads(hf_bert, tmp_path, hf_home, monkeypatch):
    """Online, snapshot_download gets the cache of HF_HOME and patterns for the config, the
    tokenizer files and the safetensors weights; PyTorch weights only when there are none."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    snapshot = write_hub_cache(
        hf_home / "hub", "org/bin-only", _save(hf_bert, tmp_path / "repo", safetensors=False)
    )
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    import_checkpoint("org/bin-only", tmp_path / "uc")
    assert [c[0] for c in calls] == ["org/bin-only", "org/bin-only"]
    first, second = (c[1] for c in calls)
    assert first["cache_dir"] == str(hf_home / "hub") and first["local_files_only"] is False
    assert {"config.json", "vocab.txt", "tokenizer.json", "model.safetensors"} <= set(first["allow_patterns"])
    assert not any("bin" in p or "h5" in p or "msgpack" in p or "onnx" in p for p in first["allow_patterns"])
    assert "pytorch_model.bin" in second["allow_patterns"]
    assert not any("safetensors" in p for p in second["allow_patterns"])
    assert _same_logits(hf_bert, tmp_path / "uc")


def test_paths_are_never_hub_ids(tmp_path, monkeypatch):
    for name in (
        "bert-base-uncased",
        "pbelcak/UltraFastBERT-1x11-long",
        "google-bert/bert-base-uncased",
        "x",
    ):
        assert looks_like_hub_id(name), name
    for name in (
        "./ckpt",
        "/abs/ckpt",
        "a/b/c",
        "~/ckpt",
        "ckpt/",
        "a--b",
        "a..b",
        "repo.git",
        "",
        "-x",
        "x" * 97,
    ):
        assert not looks_like_hub_id(name), name
    # a missing path is reported as such, without huggingface_hub (which is made unimportable here)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ConversionError, match="is not a directory"):
        import_checkpoint(tmp_path / "missing" / "ckpt", tmp_path / "uc")


def test_hub_id_without_huggingface_hub_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(MissingDependencyError, match=r"org/model .*hub id.*pip install huggingface_hub"):
        import_checkpoint("org/model", tmp_path / "uc")


def test_out_inside_the_hub_cache_is_refused(tmp_path, hf_home):
    with pytest.raises(UltracramError, match="Hugging Face cache"):
        import_checkpoint("org/model", hf_home / "hub" / "models--org--model" / "converted")
