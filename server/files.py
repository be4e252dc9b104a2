"""Files the server writes for itself (renders, pictures, the session): whole or not at all, never through a
name a client could have planted."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, durable: bool = False) -> Path:
    """Write under a fresh temporary name in the same folder (`mkstemp`: random, created exclusively, so never
    through a planted link or folder), then rename: a reader sees the old file or the whole new one.
    `durable`: fsync the file before the rename and the folder after, so a write that returned survives a
    power cut (as SQLite and PostgreSQL commit). A failed write leaves no temporary file behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())  # the bytes on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_folder(path.parent)  # the rename itself on disk
    return path


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; where folders cannot be opened (Windows), nothing."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def shown(path: str | Path) -> str:
    """A path as a document names it: relative to the working folder (the repository, where the commands that
    write docs/ run) when it lies inside it, so a report does not name the machine it was made on."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
