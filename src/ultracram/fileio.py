"""Persistence, in one place: every file and directory ultracram keeps is written through here.

Size (~480 lines): the one persistence layer (atomic files and directories, their recovery
and leftovers, hashes, the run-identity check, output-directory guards); one place by design.

- A file is written to ``.<name>.tmp-<pid>`` in the same directory, fsynced, renamed over the
  target, and the directory is fsynced: a kill at any moment leaves the old file or the new one,
  never half of one (``atomic_write`` and its variants).
- A directory (a checkpoint, an export) is built in ``.<name>.tmp-<pid>``, every file in it is
  fsynced, and it is then swapped with the old one (``atomic_replace_dir``): there is no moment
  at which a crash loses both copies.
- ``guard_output_dir`` / ``check_writable_dir`` check an output directory before any work: never
  the source, never someone else's non-empty directory, writable.
- ``sha256_file`` / ``sha256_bytes`` are the one checksum helper; ``check_same_run`` is the one
  "this directory holds a different run" check.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from ultracram.errors import RunMismatchError, UltracramError

_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_tensors(tensors: Mapping[str, Any]) -> str:
    """Hex sha256 over named tensors (a state dict), sorted by name: each name, then the
    tensor's raw bytes. Equal digests mean equal names, dtypes' bytes and values."""
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def sha256_file(path: str | Path, chunk: int = _CHUNK) -> str:
    """Hex sha256 of the file ``path``, read in ``chunk``-byte blocks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# fsync
# --------------------------------------------------------------------------------------------


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    """Flush the contents of the (already closed) file ``path`` to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_tree(root: str | Path) -> None:
    """fsync every file under ``root``, then every directory (deepest first), then ``root``."""
    dirs: list[str] = []
    for here, _, files in os.walk(root):
        dirs.append(here)
        for name in files:
            p = os.path.join(here, name)
            if not os.path.islink(p):
                fsync_file(p)
    for d in reversed(dirs):
        fsync_dir(d)


# --------------------------------------------------------------------------------------------
# Leftovers of killed processes
# --------------------------------------------------------------------------------------------


def _tmp_name(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` may still be running (this process counts as not running: its own
    leftovers are never in use by a write in progress, as writes do not nest)."""
    if pid == os.getpid():
        return False
    if os.name != "posix":  # no cheap safe probe: assume it runs, so nothing of it is removed
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _dead_writers(directory: str | Path, name: str) -> list[tuple[Path, int]]:
    """Entries of ``directory`` whose whole name matches the regex ``name`` followed by
    ``-<pid>`` of a process that is gone, as (path, pid): the leftovers of killed writers."""
    pattern = re.compile(rf"{name}-(\d+)")
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    found = []
    for e in entries:
        m = pattern.fullmatch(e.name)
        if m and not _pid_alive(int(m.group(1))):
            found.append((Path(e.path), int(m.group(1))))
    return found


def _leftovers(path: Path, kind: str) -> list[tuple[Path, int]]:
    """``.<name>.<kind>-<pid>`` siblings of ``path`` left by dead processes, as (path, pid)."""
    return _dead_writers(path.parent, rf"\.{re.escape(path.name)}\.{kind}")


def remove_stale_temporaries(directory: str | Path, prefix: str) -> list[Path]:
    """Remove the ``.<prefix>*.tmp-<pid>`` / ``.<prefix>*.old-<pid>`` leftovers of writers that
    died (their process is gone) in ``directory``, whatever file they were writing; returns
    them. A live writer's temporaries are left alone."""
    removed = [path for path, _ in _dead_writers(directory, rf"\.{re.escape(prefix)}.*\.(?:tmp|old)")]
    for path in removed:
        _remove(path)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def atomic_write_path(path: str | Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` atomically through ``write(tmp_path)``, for writers that take a file name
    (``safetensors.save_file``, ``Tokenizer.save``, ``shutil.copyfile``). ``tmp_path`` ends in
    ``.tmp-<pid>``, so the writer must not infer a format from the suffix."""
    path = Path(path)
    for stale, _ in _leftovers(path, "tmp"):  # a killed writer's half-written file
        _remove(stale)
    tmp = _tmp_name(path)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write(
    path: str | Path, write: Callable[[IO[Any]], object], mode: str = "wb", *, newline: str | None = None
) -> None:
    """Write ``path`` through ``write(file)`` atomically (see the module docstring). Text modes
    use UTF-8; ``newline`` is passed to ``open`` (``""`` for the ``csv`` module)."""

    def to(tmp: Path) -> None:
        kwargs: dict[str, Any] = {} if "b" in mode else {"encoding": "utf-8", "newline": newline}
        with open(tmp, mode, **kwargs) as f:
            write(f)

    atomic_write_path(path, to)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), "wb")


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), "w")


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """``obj`` as JSON (plus a final newline), atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


# --------------------------------------------------------------------------------------------
# Directories
# --------------------------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2: Any = None
_renameat2_loaded = False


def _load_renameat2() -> Any:
    global _renameat2, _renameat2_loaded
    if not _renameat2_loaded:
        _renameat2_loaded = True
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)  # the symbols of this process, libc among them
                fn = libc.renameat2  # glibc >= 2.28
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                fn.restype = ctypes.c_int
                _renameat2 = fn
            except (OSError, AttributeError):
                _renameat2 = None
    return _renameat2


def exchange_paths(a: str | Path, b: str | Path) -> bool:
    """Swap ``a`` and ``b`` atomically (Linux ``renameat2(RENAME_EXCHANGE)``). False where the
    C library, kernel or file system cannot (then nothing happened); other errors raise."""
    fn = _load_renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, f"cannot exchange {a} and {b}: {os.strerror(err)}")


def recover_dir(target: str | Path) -> None:
    """Repair what a killed ``atomic_replace_dir`` of ``target`` may have left.

    If ``target`` is missing and an old copy ``.<name>.old-<pid>`` of a dead process exists
    (the kill fell between the two renames of the fallback swap), the old copy is put back.
    Then stale ``.<name>.tmp-<pid>`` / ``.<name>.old-<pid>`` leftovers of dead processes are
    removed. Safe to call at any time; a no-op when there is nothing to repair.
    """
    target = Path(target)
    olds = _leftovers(target, "old")
    if olds and not os.path.lexists(target):
        newest = max(olds, key=lambda o: o[0].stat().st_mtime_ns)[0]
        os.replace(newest, target)
        fsync_dir(target.parent)
    for stale, _ in _leftovers(target, "old") + _leftovers(target, "tmp"):
        _remove(stale)


def atomic_replace_dir(target: str | Path, build: Callable[[Path], None]) -> Path:
    """Build a new ``target`` directory through ``build(tmp_dir)`` and put it in place.

    ``build`` fills an empty sibling ``.<name>.tmp-<pid>``; every file in it is then fsynced and
    it replaces ``target``. On Linux an existing ``target`` is swapped with it atomically
    (``renameat2(RENAME_EXCHANGE)``) and the old copy removed afterwards; elsewhere the old copy
    is first renamed aside to ``.<name>.old-<pid>`` and ``recover_dir`` (called here first)
    restores it if a kill fell between the renames. If ``build`` raises, ``target`` is untouched.
    Returns ``target``.
    """
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = _tmp_name(target)
    _remove(tmp)
    tmp.mkdir()
    try:
        build(tmp)
        fsync_tree(tmp)
        if not os.path.lexists(target):
            os.replace(tmp, target)
        elif not exchange_paths(tmp, target):  # else tmp now holds the old copy; finally removes it
            old = _tmp_name(target, "old")
            _remove(old)
            os.replace(target, old)
            try:
                os.replace(tmp, target)  # a kill before this: recover_dir puts the old copy back
            except BaseException:
                if not os.path.lexists(target):
                    os.replace(old, target)
                raise
            fsync_dir(parent)
            _remove(old)
        fsync_dir(parent)
    finally:
        _remove(tmp)
    return target


# --------------------------------------------------------------------------------------------
# Output directories: checked before any work, never silently replaced
# --------------------------------------------------------------------------------------------


def is_within(path: str | Path, directory: str | Path) -> bool:
    """Whether ``path`` is ``directory`` or lies inside it (both resolved first, so ``..`` and
    symbolic links cannot hide the relation)."""
    p, d = Path(path).resolve(), Path(directory).resolve()
    return p == d or d in p.parents


def check_writable_dir(path: str | Path, flag: str = "--out") -> None:
    """Raise ``UltracramError`` (one line naming ``flag`` and the path) unless ``path`` is, or can
    be created as, a directory this process may write: not a file, no file among its parents,
    and the nearest existing ancestor writable. Creates nothing."""
    p = Path(path)
    if os.path.lexists(p) and not p.is_dir():
        raise UltracramError(f"{flag} {p}: exists and is not a directory")
    ancestor = p
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UltracramError(f"{flag} {p}: cannot be created, {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UltracramError(f"{flag} {p}: cannot be written, {ancestor} is not writable")


def guard_output_dir(
    out: str | Path,
    *,
    command: str,
    sources: Mapping[str, str | Path] | None = None,
    is_own_output: Callable[[Path], bool] | None = None,
    overwrite: bool = False,
    flag: str = "--out",
) -> None:
    """The one "may this command write its output directory ``out``" check, done before any work.

    Refused (``UltracramError``, one line): ``out`` equal to, inside, or holding one of
    ``sources`` (``{"--checkpoint": path}``; paths resolved first); ``out`` not writable
    (``check_writable_dir``); an existing non-empty ``out`` that ``is_own_output`` does not
    recognise as an earlier output of ``command``; and one it does recognise unless
    ``overwrite`` is given.
    """
    out = Path(out)
    for name, src in (sources or {}).items():
        if is_within(out, src):
            raise UltracramError(f"{flag} {out} is {name} {src} or inside it; writing there would destroy "
                                 "the source: choose another directory")  # fmt: skip
        if is_within(src, out):
            raise UltracramError(f"{flag} {out} holds {name} {src}; replacing it would destroy the source: "
                                 "choose another directory")  # fmt: skip
    check_writable_dir(out, flag)
    if not out.is_dir() or not any(out.iterdir()):
        return
    if is_own_output is not None and is_own_output(out):
        if not overwrite:
            raise UltracramError(f"{flag} {out} holds an earlier output of `{command}`; pass --overwrite "
                                 "to replace it, or choose another directory")  # fmt: skip
        return
    raise UltracramError(f"{flag} {out} is not empty and is not an output of `{command}`; nothing was "
                         "written: choose a new or empty directory")  # fmt: skip


def link_or_copy_tree(src: str | Path, dst: str | Path) -> None:
    """Recreate the file or directory ``src`` at ``dst`` with hard links (the same bytes, no
    space used), copying (``shutil.copy2``, times kept) where the file system cannot link."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    src, dst = Path(src), Path(dst)
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, copy_function=link)
    elif src.is_symlink():
        os.symlink(os.readlink(src), dst)
    else:
        link(str(src), str(dst))


# --------------------------------------------------------------------------------------------
# "This directory holds a different run"
# --------------------------------------------------------------------------------------------

_MISSING = object()


def _show(value: Any) -> str:
    if value is _MISSING:
        return "(absent)"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _differences(stored: Any, mine: Any, prefix: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(mine, dict):
        out: list[str] = []
        for key in sorted(set(stored) | set(mine), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            out += _differences(stored.get(key, _MISSING), mine.get(key, _MISSING), name)
        return out
    if stored is not _MISSING and mine is not _MISSING and stored == mine:
        return []
    return [f"{prefix or '(value)'}: {_show(stored)} -> {_show(mine)}"]


def check_same_run(
    path: str | Path, ident: dict[str, Any], *, what: str, hint: str, record: dict[str, Any] | None = None
) -> None:
    """The one "this directory holds a different run" check.

    If the JSON file ``path`` exists and differs from ``ident`` (compared after a JSON round
    trip, so tuples equal lists), raise ``RunMismatchError`` with one line naming the file,
    every differing key (dotted, nested dicts compared recursively: ``settings.lr: 4e-05 ->
    0.001``, stored value first) and ``hint``. Otherwise, when it does not exist, write
    ``ident`` to it atomically. ``what`` names the run (``"pretraining run"``, ``"study"``).
    ``record`` (e.g. the software environment) is written beside ``ident`` the first time and
    its top-level keys are never compared.
    """
    path = Path(path)
    mine = json.loads(json.dumps(ident))
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {**json.loads(json.dumps(record or {})), **mine})
        return
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunMismatchError(f"{path} cannot be read as the record of a {what} ({e}); {hint}") from e
    if isinstance(stored, dict) and record:
        stored = {k: v for k, v in stored.items() if k not in record or k in mine}
    diffs = _differences(stored, mine)
    if diffs:
        raise RunMismatchError(
            f"{path} records a {what} with different settings ({'; '.join(diffs)}); {hint}"
        )


__all__ = [
    "atomic_replace_dir",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_path",
    "atomic_write_text",
    "check_same_run",
    "check_writable_dir",
    "exchange_paths",
    "fsync_dir",
    "fsync_file",
    "fsync_tree",
    "guard_output_dir",
    "is_within",
    "link_or_copy_tree",
    "recover_dir",
    "remove_stale_temporaries",
    "sha256_bytes",
    "sha256_file",
    "sha256_tensors",
]
