"""Starts the real `reckon serve` for tests: a free loopback port, a fresh data
directory, explicit credentials."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[3]
ADMIN_TOKEN = "admin-test-token-0123456789abcdef0123456789"


def reckon_binary() -> Path:
    """The server binary: $RECKON_BIN, else the workspace's debug build."""
    path = Path(os.environ.get("RECKON_BIN", REPO / "target" / "debug" / "reckon"))
    if not path.exists():
        raise RuntimeError(f"{path} not found: run `cargo build --bin reckon` (clients/python/ci.sh does)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReckonServer:
    """One `reckon serve` process: `top_config` holds top-level keys, `extra_config`
    tables appended to its TOML file."""

    def __init__(self, extra_config: str = "", data_dir: Optional[Path] = None,
                 port: Optional[int] = None, top_config: str = "") -> None:
        self.port = port or free_port()
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="reckon-py-")
            data_dir = Path(self._tmp.name)
        self.data_dir = Path(data_dir)
        self.config = self.data_dir / "reckon.toml"
        self.config.write_text(
            f'listen = "127.0.0.1:{self.port}"\n'
            f'data_dir = "{self.data_dir / "data"}"\n' + top_config +
            f'[[credential]]\nname = "admin"\ntoken = "{ADMIN_TOKEN}"\n' + extra_config)
        self.proc: Optional[subprocess.Popen] = None
        self.log = self.data_dir / "server.log"

    def start(self, timeout: float = 20.0) -> "ReckonServer":
        env = dict(os.environ, RECKON_LOG=os.environ.get("RECKON_LOG", "warn"))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(reckon_binary()), "serve", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"reckon exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"reckon did not listen on {self.port}: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL if it lingers."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
