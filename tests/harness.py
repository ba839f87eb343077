"""Test harness: a real `mallard serve` process on 127.0.0.1 with port 0, and DuckDB over its store."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from mallard.query import Store

READY = re.compile(r"ready grpc=(?P<host>[^:\s]+):(?P<grpc>\d+) http=[^:\s]+:(?P<http>\d+)")
UI = re.compile(r" ui=[^:\s]+:(?P<ui>\d+)")


@dataclass
class MallardServer:
    """A `mallard serve` child process; `grpc_endpoint`/`http_endpoint` point at it."""

    data: Path
    process: subprocess.Popen[str]
    grpc_port: int
    http_port: int
    output: list[str] = field(default_factory=list)
    ui_port: int | None = None  # the HTTP API's port; None when it is off (`--ui false`)

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)


def start_server(
    data: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 60
) -> MallardServer:
    """Starts `mallard serve` on free ports (the HTTP API's too) and waits for its ready line."""
    command = [
        sys.executable,
        "-m",
        "mallard.app.cli",
        "serve",
        "--data",
        str(data),
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        "--ui-port",
        "0",
        *extra,
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = READY.search(line)
        if match:
            server = MallardServer(data, process, int(match["grpc"]), int(match["http"]), lines)
            ui = UI.search(line)
            server.ui_port = int(ui["ui"]) if ui else None
            threading.Thread(target=_drain, args=(process, lines), daemon=True).start()
            return server
    process.kill()
    raise RuntimeError("mallard serve did not become ready:\n" + "".join(lines))


def _drain(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)


def query(data: Path, sql: str) -> pa.Table:
    with Store(data) as store:
        return store.sql(sql)


def wait_for_rows(data: Path, sql: str, expected: int, timeout: float = 30) -> pa.Table:
    """Polls `sql` (a query whose row count grows) until it returns `expected` rows."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(data, sql)
        if result.num_rows >= expected or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def run_cli(args: Sequence[str], *, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mallard.app.cli", *args],
        capture_output=True,
        text=True,
        input=input_text,
        timeout=120,
        check=False,
    )
