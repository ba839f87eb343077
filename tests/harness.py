"""Test harness: a real `mallard serve` process on 127.0.0.1 with port 0, and DuckDB over its store."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from mallard.query import Store

READY = re.compile(r"ready grpc=(?P<host>[^:\s]+):(?P<grpc>\d+) http=[^:\s]+:(?P<http>\d+)")
UI = re.compile(r" ui=[^:\s]+:(?P<ui>\d+)")
UI_READY = re.compile(r"mallard ui: ready http=(?P<host>[^:\s]+):(?P<port>\d+) data=(?P<data>\S+)")


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
    """Starts `mallard serve` on free ports (the HTTP API's too), without periodic store maintenance
    unless `extra` asks for it, and waits for its ready line."""
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
        "--compact-interval",  # store maintenance only where a test asks for it (a later flag wins)
        "0",
        *extra,
    ]
    process, match, lines = _start_until_ready(command, READY, {**os.environ, **(env or {})}, timeout)
    ui = UI.search(match.string)
    return MallardServer(
        data, process, int(match["grpc"]), int(match["http"]), lines, int(ui["ui"]) if ui else None
    )


def _start_until_ready(
    command: list[str], ready: re.Pattern[str], env: dict[str, str], timeout: float
) -> tuple[subprocess.Popen[str], re.Match[str], list[str]]:
    """Starts `command` and reads its output until a line matches `ready`; the rest keeps being read
    into the returned list (for failure messages). Kills it and raises when no such line comes."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = ready.search(line)
        if match:
            threading.Thread(target=_drain, args=(process, lines), daemon=True).start()
            return process, match, lines
    process.kill()
    raise RuntimeError(f"{' '.join(command[2:5])} did not become ready:\n" + "".join(lines))


@dataclass
class ApiClient:
    """JSON over urllib to the HTTP API on 127.0.0.1:`port`; `call` answers (status, parsed body)."""

    port: int
    token: str | None = None

    def call(
        self, path: str, *, body: object = None, token: str | None = None, auth: bool = True
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if auth and (token or self.token):
            headers["Authorization"] = f"Bearer {token or self.token}"
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers=headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status, raw, kind = answer.status, answer.read(), answer.headers["content-type"]
        except urllib.error.HTTPError as error:
            status, raw, kind = error.code, error.read(), error.headers["content-type"]
        return status, json.loads(raw) if kind.startswith("application/json") else raw.decode()


@dataclass(kw_only=True)
class UiServer(ApiClient):
    """A `mallard ui` child process serving the HTTP API on `port`."""

    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def start_ui(data: Path, *extra: str, token: str | None = None, timeout: float = 60) -> UiServer:
    """Starts `mallard ui` on a free port (no auth token from the environment) and waits until ready."""
    command = [sys.executable, "-m", "mallard.app.cli", "ui", "--data", str(data), "--ui-port", "0", *extra]
    env = {key: value for key, value in os.environ.items() if key != "MALLARD_AUTH_TOKEN"}
    process, match, lines = _start_until_ready(command, UI_READY, env, timeout)
    assert match["host"] == "127.0.0.1" and match["data"] == str(data.resolve())
    return UiServer(port=int(match["port"]), token=token, process=process, output=lines)


def _drain(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)


def post_otlp(server: MallardServer, signal: str, payload: bytes) -> None:
    """POSTs an OTLP protobuf export request to `/v1/<signal>` and checks it was accepted."""
    request = urllib.request.Request(
        f"{server.http_endpoint}/v1/{signal}",
        data=payload,
        headers={"Content-Type": "application/x-protobuf"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200


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


def env_without_otel(**extra: str) -> dict[str, str]:
    """This process's environment without its `OTEL_*` variables, plus `extra`: what a child that
    sets up OpenTelemetry itself should see."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {**clean, **extra}


def run_python(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Runs `script` (`python -c`) in a fresh interpreter, with `env_without_otel(**env)`, and returns
    its stdout; fails the test when it exits non-zero. OpenTelemetry's providers are process-global,
    so each instrumented case runs in its own interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env_without_otel(**(env or {})),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def run_cli(args: Sequence[str], *, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mallard.app.cli", *args],
        capture_output=True,
        text=True,
        input=input_text,
        timeout=120,
        check=False,
    )
