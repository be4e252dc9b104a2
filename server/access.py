"""What a client may read and where it may write: the one place that decides, for every path a message names.

A client names files (`/analyze`) and folders (`/export/instrument`); the performer names the folders they
may be in (`serve --read-dir`, default: home and the current folder). Defaults never open the whole disk: a
server started from `/` or a system folder (a container's WORKDIR, a service) does not take it as a root, nor
a folder above home (`/home`: everyone's). The output folder is readable (renders) but never written by a
client, and the session file and the folders above it are never an export's target: a client cannot plant
anything where the server itself writes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

# Never a default root (named explicitly with --read-dir, still allowed): the filesystem's root, the folders
# the system keeps, and anything inside those that hold the system itself.
SYSTEM_TREES = tuple(Path(p) for p in ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32",
                                       "/proc", "/run", "/sbin", "/sys", "/usr", "/var"))  # fmt: skip
SYSTEM_FOLDERS = (Path("/"), Path("/home"), Path("/mnt"), Path("/media"), Path("/opt"), Path("/srv"), Path("/tmp"))


class AccessError(ValueError):
    """A path a client may not use; the message says why (for `/error`)."""


def is_system(folder: Path) -> bool:
    return folder in SYSTEM_FOLDERS or any(folder.is_relative_to(t) for t in SYSTEM_TREES)


def default_roots(home: Path, cwd: Path) -> tuple[tuple[Path, ...], list[str]]:
    """(the roots of `serve` without --read-dir, why each candidate left out was left out)."""
    home, cwd = home.resolve(), cwd.resolve()
    roots: list[Path] = []
    dropped = []
    for name, folder in (("home", home), ("current folder", cwd)):
        if is_system(folder):
            dropped.append(f"{name} {folder} (a system folder)")
        elif folder != home and home.is_relative_to(folder):
            dropped.append(f"{name} {folder} (it holds more than your home)")
        elif folder not in roots:
            roots.append(folder)
    return tuple(roots), dropped


class Access:
    """Read roots (files under them may be read), the server's own paths (never written by a client)."""

    def __init__(self, roots: Iterable[Path], output: Path, session: Path | None = None):
        self.roots = tuple(dict.fromkeys(Path(r).expanduser().resolve() for r in roots))
        self.output = output.resolve()
        self.session = Path(session).expanduser().resolve() if session is not None else None

    def describe(self) -> str:
        """For the start-up log: what clients may touch."""
        roots = ", ".join(map(str, self.roots)) or "none"
        return f"clients may read under {roots} and {self.output} (renders), and export under {roots}"

    def _resolve(self, path: str) -> Path:
        if "\0" in path:
            raise AccessError(f"{path!r}: a path with a NUL byte")
        expanded = os.path.expanduser(path)
        if expanded.startswith("~"):
            raise AccessError(f"{path}: no such user's home ({path.split('/')[0]})")
        try:
            resolved = Path(expanded).resolve()
            resolved.exists()  # raises for a name too long for the system, which resolve() lets through
            return resolved
        except (OSError, RuntimeError) as exc:  # a name too long, a link loop
            raise AccessError(f"{path[:200]}: {exc.strerror if isinstance(exc, OSError) else exc}") from None

    def _outside(self, path: str, resolved: Path, verb: str) -> AccessError:
        # Where `~`, a relative path or `..` led is said; where a link led is not (/proc/self/cwd, /proc/self/fd/N
        # would tell a client what the server has open).
        plain = Path(os.path.abspath(os.path.expanduser(path)))
        shown = path if path == str(resolved) else f"{path} (that is {plain}{', through a link' * (plain != resolved)})"
        roots = ", ".join(map(str, self.roots)) or "none"
        return AccessError(f"{shown}: outside the folders the server may {verb} ({roots}; serve --read-dir)")

    def readable(self, path: str) -> Path:
        """A client's file to read, resolved (links, `..`, `~`); only under the roots or the output folder."""
        resolved = self._resolve(path)
        if not any(resolved.is_relative_to(d) for d in (*self.roots, self.output)):
            raise self._outside(path, resolved, "read")
        if not resolved.is_file():
            raise AccessError(f"{path}: {'a folder, not a sound file' if resolved.is_dir() else 'no such file'}")
        return resolved

    def recheck(self, resolved: Path) -> Path:
        """The path `readable` gave, checked again just before it is opened: a link swapped in meanwhile (a
        component of the path replaced) is refused, not followed."""
        again = self.readable(str(resolved))
        if again != resolved:
            raise AccessError(f"{resolved}: changed into a link to {again} since it was asked for")
        return again

    def writable(self, path: str) -> Path:
        """A client's folder to write (an export), resolved; only under the roots, never in the output folder,
        at the session file or above it."""
        resolved = self._resolve(path)
        if not any(resolved.is_relative_to(d) for d in self.roots):
            raise self._outside(path, resolved, "write")
        if resolved.is_relative_to(self.output) or self.output.is_relative_to(resolved):
            raise AccessError(f"{path}: the server's output folder ({self.output}) is not for exports")
        if self.session is not None and self.session.is_relative_to(resolved):
            raise AccessError(f"{path}: the session file ({self.session}) is there")
        return resolved
