"""Run ``openvla-serve`` as a child process on a free loopback port (tests and the load test)."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from openvla_ros import defaults, runtime_env


def free_port(host: str = defaults.DEFAULT_SERVER_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m openvla_ros.server.cli --checkpoint DIR --port P [args]``, logging to a file.

    ``env`` defaults to the project's runtime environment (offline model hub)."""

    def __init__(self, checkpoint: str | Path, *args: str, log_path: str | Path,
                 port: int | None = None, env: dict | None = None):
        self.port = port or free_port()
        self.url = f'http://{defaults.DEFAULT_SERVER_HOST}:{self.port}'
        self.log_path = Path(log_path)
        self.cmd = [sys.executable, '-m', 'openvla_ros.server.cli', '--checkpoint', str(checkpoint),
                    '--port', str(self.port), *args]
        self.env = runtime_env.loopback_env() if env is None else env
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> ServerProcess:
        """Start and wait until ``/healthz`` answers ok; raise with the log tail if it does not."""
        with open(self.log_path, 'wb') as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f'openvla-serve exited with {self.proc.returncode}:\n'
                                   f'{self.log()[-3000:]}')
            try:
                if requests.get(self.url + '/healthz', timeout=1.0).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f'openvla-serve did not become healthy in {timeout_s} s:\n'
                           f'{self.log()[-3000:]}')

    def log(self) -> str:
        return self.log_path.read_text(errors='replace') if self.log_path.exists() else ''

    def kill(self) -> None:
        """End the server abruptly (SIGKILL), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGINT (uvicorn's graceful shutdown), then SIGKILL after ``timeout_s``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

