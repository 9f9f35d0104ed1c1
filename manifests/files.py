"""Atomic file writes, hashing and Parquet tables: the I/O every stage shares."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from manifests.errors import UserError


FILE_MODE, DIR_MODE = 0o666, 0o777  # before the umask, as open() and mkdir() create them


def publish_dir(path: Path) -> None:
    """Give a folder made by ``tempfile.mkdtemp`` (mode 0700) the usual mode under the umask."""
    os.chmod(path, DIR_MODE & ~current_umask())


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only if the block succeeds.

    A crash inside the block leaves ``path`` untouched (old content or absent), never half written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise UserError(f"cannot write under {path.parent}: {exc.strerror}; check the path, "
                        "its permissions and free disk space") from exc
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE & ~current_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}; check permissions and free disk space") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj):
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_table(path: Path, frame: pd.DataFrame) -> None:
    """Write a per-video (or per-class) table as Parquet, atomically."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def read_table(path: Path) -> pd.DataFrame:
    """Read a Parquet table written by :func:`write_table`."""
    return pd.read_parquet(path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj) -> str:
    """Hex sha256 of the canonical JSON form of ``obj`` (sorted keys): a config hash."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def portable_path(path, stage_dir: Path) -> str:
    """How a manifest or table records ``path``: relative to ``stage_dir`` when it lies inside the
    work directory (the stage folder's parent), so the work directory can be moved or mounted
    elsewhere; absolute when it lies outside (a dataset or video folder that stays where it is)."""
    path, stage_dir = Path(path).resolve(), Path(stage_dir).resolve()
    if path.is_relative_to(stage_dir.parent):
        return Path(os.path.relpath(path, stage_dir)).as_posix()
    return path.as_posix()


def resolve_portable(text: str, stage_dir: Path) -> Path:
    """Inverse of :func:`portable_path`."""
    return (Path(stage_dir) / text).resolve()
