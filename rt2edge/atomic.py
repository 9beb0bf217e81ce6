"""Atomic file writes (stdlib only, so the robot-side artifact code can use them too): a reader never sees a half-written file, a crash leaves no partial one.

Write to a temporary name in the same folder (same filesystem, so the rename is atomic), flush to
disk, then `os.replace` onto the final name. Temporary names start with "." and end with ".tmp",
so readers and resumed runs can recognise and ignore (or delete) leftovers of a crashed run.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

TMP_SUFFIX = ".tmp"


def is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)


def atomic_write(path: Path, write: Callable[[Path], None], mode: int | None = None) -> None:
    """Call `write(tmp_path)` to produce the file, then move it onto `path` atomically.

    mode: the file's permissions; default 0o666 minus the umask, as a plain open() would give."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask() if mode is None else mode)  # mkstemp makes 0600
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data), mode)


def atomic_write_text(path: Path, text: str, mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_json(path: Path, obj: Any, allow_nan: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=allow_nan) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    text = "".join(json.dumps(row, sort_keys=False) + "\n" for row in rows)
    atomic_write_bytes(path, text.encode())


def fsync_tree(root: Path) -> None:
    """Flush every file under `root`, then the folders themselves (their entries), to disk: what a
    folder written by another library (accelerate's save_state) needs before it is renamed into
    place and older copies are deleted, or a power loss can leave only a truncated newest one."""
    root = Path(root)
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        fsync_path(path)
    fsync_path(root)


def fsync_path(path: Path) -> None:
    """fsync one file, or one folder's entries (after a rename into it)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. a platform that cannot open a folder (Windows): best effort
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_temporaries(root: Path) -> int:
    """Delete leftovers of interrupted writes under `root`; returns how many were removed."""
    removed = 0
    for path in Path(root).rglob(f".*{TMP_SUFFIX}"):
        if path.is_file():
            path.unlink()
            removed += 1
    return removed
