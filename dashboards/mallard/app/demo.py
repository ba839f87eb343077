"""`mallard demo`: sample workloads that fill every dashboard within a minute.

Against a running collector (`--endpoint HOST:PORT`, OTLP gRPC) or, by default, against a `mallard
serve` of its own on a temporary store (or `--data DIR`). Each workload is a child process with its
own service name, instrumented only through `mallard.instrumentation` (what a user would write):

- `shop` (`demo-frontend`, `demo-inventory`): Flask server spans, a downstream HTTP call (a
  service-map edge), 404s and 500s, HTTP duration histograms, logs with trace context;
- `llm` (`demo-assistant`): `gen_ai.*` chat and embedding spans with token usage (priced at ingest),
  a few time-outs, the GenAI client metrics;
- `training` (`demo-trainer`): a PyTorch run on CPU observed in automatic mode: run, epoch and step
  spans, loss, learning rate, grad norm, throughput, data wait, distributions, checkpoints;
- `model` (`demo-scorer`): churn predictions with features from two versions, labels 2-8 s later
  (15 % never labelled), a drift of `income` and `plan` injected halfway.

A workload whose optional packages are missing (`mallard[flask]`, `mallard[torch]`) is skipped with a
one-line reason. The own server stays up after the workloads end, until Ctrl-C, so the data can be
explored (`--exit-after` stops it with the workloads; the store is kept).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

WORKLOADS: Final = ("shop", "llm", "training", "model")
_READY: Final = re.compile(r"ready grpc=(?P<grpc>\S+) http=\S+ .*?(?: ui=(?P<ui>\S+))?$")
_PROG: Final = "mallard demo"
SKIPPED: Final = 3  # a workload's exit status when its optional packages are missing


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint",
        default=None,
        metavar="HOST:PORT",
        help="OTLP gRPC address of a running mallard serve (default: start one on --data)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="DIR",
        help="store of the demo's own server (default: a new temporary directory, kept)",
    )
    parser.add_argument(
        "--ui-port",
        type=int,
        default=8686,
        metavar="P",
        help="HTTP API port of the demo's own server, 0 for any free port (default: 8686)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long the workloads run (default: 60)",
    )
    parser.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        metavar="LIST",
        help=f"comma-separated workloads to run (default: {','.join(WORKLOADS)})",
    )
    parser.add_argument("--token", default=None, metavar="T", help="bearer token of the collector")
    parser.add_argument(
        "--exit-after",
        action="store_true",
        help="stop the demo's own server when the workloads end (default: serve until Ctrl-C)",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class _Server:
    process: subprocess.Popen[str]
    endpoint: str
    ui: str | None
    data: Path


def run_demo(args: argparse.Namespace) -> int:
    chosen = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = sorted(set(chosen) - set(WORKLOADS))
    if unknown or not chosen:
        print(f"{_PROG}: error: --only takes {', '.join(WORKLOADS)}; got {args.only!r}", file=sys.stderr)
        return 2
    if args.duration <= 0:
        print(f"{_PROG}: error: --duration must be positive, got {args.duration}", file=sys.stderr)
        return 2
    server = None
    endpoint = args.endpoint
    if endpoint is None:
        data = args.data or Path(tempfile.mkdtemp(prefix="mallard-demo-"))
        try:
            server = _start_server(data, args.ui_port, args.token)
        except RuntimeError as exc:
            print(f"{_PROG}: error: {exc}", file=sys.stderr)
            return 1
        endpoint = server.endpoint
        ui = f" api=http://{server.ui}" if server.ui else ""
        print(f"{_PROG}: own server grpc={endpoint}{ui} data={data.resolve()}", flush=True)
    try:
        codes = _run_workloads(chosen, endpoint, args.duration, args.token)
        if server is not None and not args.exit_after:
            print(f"{_PROG}: workloads done; serving {server.data.resolve()} until Ctrl-C", flush=True)
            _wait_for_interrupt(server.process)
    finally:
        if server is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(timeout=120)
    failed = [name for name, code in codes.items() if code not in (0, SKIPPED)]
    if failed:
        print(f"{_PROG}: error: workloads failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _start_server(data: Path, ui_port: int, token: str | None) -> _Server:
    command = [
        sys.executable, "-m", "mallard.app.cli", "serve", "--data", str(data),
        "--grpc-port", "0", "--http-port", "0", "--ui-port", str(ui_port),
        "--flush-interval", "1",
    ]  # fmt: skip
    if token:
        command += ["--auth-token", token]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    for line in process.stdout:
        if match := _READY.search(line.strip()):
            threading.Thread(target=_drain, args=(process,), daemon=True).start()
            return _Server(process=process, endpoint=match["grpc"], ui=match["ui"], data=data)
        if time.monotonic() > deadline:
            break
    process.kill()
    process.wait()
    raise RuntimeError("mallard serve did not start (is the --ui-port free? try --ui-port 0)")


def _drain(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    for _ in process.stdout:
        pass


def _run_workloads(
    chosen: Sequence[str], endpoint: str, duration: float, token: str | None
) -> dict[str, int]:
    env = dict(os.environ)
    env.pop("OTEL_SERVICE_NAME", None)
    children: dict[str, subprocess.Popen[str]] = {}
    for name in chosen:
        command = [
            sys.executable, "-m", "mallard.app.demo_workloads", name,
            "--endpoint", endpoint, "--duration", str(duration),
        ]  # fmt: skip
        if token:
            command += ["--token", token]
        children[name] = subprocess.Popen(command, env=env, text=True)
    print(f"{_PROG}: running {', '.join(chosen)} for {duration:g} s", flush=True)
    codes: dict[str, int] = {}
    try:
        for name, child in children.items():
            codes[name] = child.wait(timeout=duration + 120)
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for name, child in children.items():
            codes[name] = child.wait(timeout=60)
    return codes


def _wait_for_interrupt(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        process.wait()
