"""The one server-process launcher: `inpaint-osc serve` in its own process on free ports, with its folders
(renders, sounds it may read, session, log) and torch blocked, for the benchmark, the reliability suite, the
soak, the scripts and the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from server.client import OscClient

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding `server`: the server runs this code
# runpy with torch and librosa blocked: the runtime must never import them (a test would fail loudly).
BLOCKED_TORCH = (
    "import runpy, sys; sys.modules['torch'] = None; sys.modules['librosa'] = None; "
    "sys.argv = ['server'] + sys.argv[1:]; runpy.run_module('server', run_name='__main__')"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_pong(proc: subprocess.Popen, port: int, timeout: float = 60.0, log: Path | None = None) -> OscClient:
    """Ping until the server answers; raises with the end of its log if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            said = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {said}")
        client = OscClient(port=port, announce=False)
        client.send("/reply_port", client.reply_port)
        if client.receive(0.2) is not None:
            return client
        client.close()
    raise TimeoutError(f"no /pong from port {port} within {timeout} s")


class ServerProcess:
    """`inpaint-osc serve` on `bundle` (None: the packaged default) with `--session`, its output, a folder of
    sounds it may read (`--read-dir`) and its log under `folder`, on free ports; `extra` arguments go to serve
    (e.g. `--no-fill`). Started at once; answers `/ping` when this returns."""

    def __init__(
        self,
        bundle: Path | None,
        folder: Path,
        *extra: str,
        threads: int = 2,
        quiet: bool = False,
        code: Path = PACKAGE_ROOT,
        cwd: Path | None = None,
        read_dir: bool = True,
    ) -> None:
        folder = Path(folder).resolve()  # the server may run anywhere: every path it is given is absolute
        self.bundle, self.folder, self.extra, self.threads, self.quiet = bundle, folder, extra, threads, quiet
        self.code = code  # the checkout whose `server` runs: another one for a before/after benchmark
        self.cwd = cwd or code  # where it runs (`/`: as a container's WORKDIR or a service would)
        self.with_read_dir = read_dir  # False: serve's default folders, home and the current one
        folder.mkdir(parents=True, exist_ok=True)
        self.out, self.read_dir = folder / "out", folder / "sounds"
        self.read_dir.mkdir(exist_ok=True)
        self.session, self.log = folder / "session.npz", folder / "server.log"
        self.port = free_port()
        self.reply_port = free_port()  # where replies to clients that never sent /reply_port go (liblo's oscsend)
        self.clients: list[OscClient] = []
        self._log: IO[str] | None = None
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        args = ["serve", *(["--bundle", str(Path(self.bundle).resolve())] if self.bundle is not None else [])]
        args += ["--port", str(self.port), "--reply-port", str(self.reply_port), "--out", str(self.out)]
        args += ["--read-dir", str(self.read_dir)] * self.with_read_dir
        args += ["--session", str(self.session), "--threads", str(self.threads)]
        args += ["--quiet"] * self.quiet + list(self.extra)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(self.code), os.environ.get("PYTHONPATH")])),
        }
        if self._log is not None:
            self._log.close()  # a restart after a kill
        # A file, not a pipe: nobody reads a pipe during a fuzz, and a full one would block the server's logging.
        self._log = open(self.log, "a")  # noqa: SIM115 (closed in stop)
        proc = subprocess.Popen(
            [sys.executable, "-c", BLOCKED_TORCH, *args],
            stdout=self._log,
            stderr=self._log,
            env=env,
            text=True,
            cwd=self.cwd,  # the code comes from PYTHONPATH, wherever it runs
        )
        wait_for_pong(proc, self.port, log=self.log).close()
        return proc

    def client(self) -> OscClient:
        """A client that announced its own reply port; closed by `stop`."""
        c = OscClient(port=self.port)
        self.clients.append(c)
        return c

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) / 1024

    def kill(self) -> None:
        """SIGKILL: no chance to save or close anything."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def restart(self) -> None:
        """The same command again: same ports, session and folders."""
        self.proc = self._start()

    def stop(self, kill: bool = False) -> None:
        for c in self.clients:
            c.close()
        self.clients.clear()
        if self.alive():
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(10)
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
