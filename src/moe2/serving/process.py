"""Start ``moe2 serve`` / ``moe2 serve-expert`` as child processes and stop them for sure.

Used by the tests, the serving benchmark and CI (and handy for a local deployment):
``with ServerProcess("serve-expert", bundle, ["expert=alpha"]) as p: p.url``. The server listens
on a free port (``server.port=0``) unless told otherwise and reports where in its ready file;
waiting for it is bounded, and stopping sends SIGTERM, then SIGKILL after ``grace_s``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

from moe2.errors import ExpertError


class ServerProcess:
    """A ``moe2 serve`` or ``moe2 serve-expert`` child process.

    Args:
        stage: ``serve`` or ``serve-expert``.
        bundle: the bundle directory.
        overrides: more Hydra overrides (``expert=NAME``, ``deployment.file=...``).
        port: TCP port (0: any free port).
        startup_s: how long to wait for the server to listen.
        log: file for the server's output (default: a temporary file).
        host: address to listen on (default loopback; an edge box's address when ``prefix`` puts
            the server in another network namespace).
        prefix: command words before the server's own (e.g. ``["ip", "netns", "exec", "box1"]``).
        env: more environment variables of the process (e.g. ``PYTHONPATH`` of another
            checkout, to run its code side by side in a benchmark).
    """

    def __init__(
        self,
        stage: str,
        bundle: str | os.PathLike[str],
        overrides: list[str] | tuple[str, ...] = (),
        port: int = 0,
        startup_s: float = 180.0,
        log: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        prefix: list[str] | tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.env = dict(env or {})
        self.host = host
        self.prefix = list(prefix)
        self.stage = stage
        self.bundle = str(bundle)
        self.overrides = list(overrides)
        self.port = port
        self.startup_s = startup_s
        self.dir = Path(tempfile.mkdtemp(prefix=f"moe2-{stage}-"))
        # its ready file, log and artifacts live as long as this object (a test may read the log
        # after stop()), then go: no moe2-serve-* directory outlives the process that made it
        self._remove_dir = weakref.finalize(self, shutil.rmtree, self.dir, ignore_errors=True)
        self.log_path = Path(log) if log else self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (as the server reported it)."""
        return str(self.info["url"])

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ServerProcess:
        """Start the process and wait (bounded) until it listens."""
        return self.launch().wait()

    def launch(self) -> ServerProcess:
        """Start the process (see :meth:`wait`)."""
        ready = self.ready = self.dir / "ready.json"
        ready.unlink(missing_ok=True)
        cmd = [
            *self.prefix,
            sys.executable,
            "-m",
            "moe2.cli",
            self.stage,
            self.bundle,
            f"server.host={self.host}",
            f"server.port={self.port}",
            f"server.ready_file={ready}",
            f"paths.artifacts={self.dir / 'artifacts'}",
            *self.overrides,
        ]
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        return self

    def wait(self) -> ServerProcess:
        """Wait (bounded by ``startup_s``) until the launched process listens."""
        assert self.proc is not None, "launch() first"
        ready = self.ready
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ExpertError(
                    f"moe2 {self.stage} exited with {self.proc.returncode}: {self.tail()}"
                )
            if ready.is_file():
                try:
                    self.info = json.loads(ready.read_text())
                    self.port = int(self.info["port"])
                    return self
                except (ValueError, KeyError):
                    pass  # being written
            time.sleep(0.1)
        self.stop()
        raise ExpertError(
            f"moe2 {self.stage} did not listen within {self.startup_s:g} s: {self.tail()}"
        )

    def tail(self, n: int = 2000) -> str:
        """The end of the server's output."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL now (an expert crashing)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``grace_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def pids(self) -> list[int]:
        """The server's process and its descendants (``server.workers`` > 1: the workers),
        from Linux ``/proc``; empty once it has exited."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as f:
                        todo += [int(c) for c in f.read().split()]
            except OSError:
                continue  # exited meanwhile
        return out

    def rss_bytes(self) -> int | None:
        """Resident memory of the server's processes, summed (Linux ``/proc``), bytes."""
        got = []
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/statm") as f:
                    got.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
            except OSError:
                continue
        return sum(got) if got else None

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the server's live processes have used so far, summed
        (Linux ``/proc``), seconds."""
        got = []
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    # the fields after the command name, which may hold spaces: utime is the 12th
                    fields = f.read().rsplit(")", 1)[1].split()
                got.append((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
            except (OSError, IndexError, ValueError):
                continue
        return sum(got) if got else None

    @staticmethod
    def start_all(procs: list[ServerProcess]) -> list[ServerProcess]:
        """Launch every process, then wait for each (they start side by side); on a failure
        every one is stopped."""
        try:
            for p in procs:
                p.launch()
            for p in procs:
                p.wait()
        except BaseException:
            for p in procs:
                p.stop()
            raise
        return procs

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
