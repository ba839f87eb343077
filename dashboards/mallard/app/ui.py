"""`mallard ui`: serves the HTTP API (`mallard.query.api`) over a store with uvicorn.

| setting | flag | env var | default |
|---|---|---|---|
| store root | `--data DIR` | `MALLARD_DATA` | `./mallard-data` |
| listen address | `--host H` | | `127.0.0.1` |
| port (0: any free port) | `--ui-port P` | | `8686` |
| bearer token every `/api/` route requires | `--auth-token T` | `MALLARD_AUTH_TOKEN` | none |

Prints `mallard ui: ready http=HOST:PORT data=DIR` once it accepts requests. SIGTERM or Ctrl-C stops
it: requests in flight finish (up to 10 s), then it exits 0. `mallard serve` runs the same server
(`serve_api`) in a child process, see `mallard.app.api_process`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import uvicorn
from fastapi import FastAPI

from mallard.query.api import create_api
from mallard.query.cli import add_data_argument, data_dir
from mallard.query.errors import QueryError

logger = logging.getLogger(__name__)

TOKEN_ENV: Final = "MALLARD_AUTH_TOKEN"
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_UI_PORT: Final = 8686
_PROG: Final = "mallard ui"


def add_ui_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_argument(parser)
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"listen address (default: {DEFAULT_HOST})")
    parser.add_argument(
        "--ui-port",
        type=int,
        default=DEFAULT_UI_PORT,
        metavar="P",
        help=f"HTTP port of the API, 0 for any free port (default: {DEFAULT_UI_PORT})",
    )
    parser.add_argument(
        "--auth-token",
        default=None,
        metavar="T",
        help=f"bearer token every /api/ route requires (default: ${TOKEN_ENV}, else none)",
    )


def run_ui(args: argparse.Namespace, *, announce: Callable[[str], None]) -> int:
    """Serves the API until SIGTERM/SIGINT; returns the exit status."""
    root = data_dir(args.data)
    token = args.auth_token if args.auth_token is not None else os.environ.get(TOKEN_ENV) or None

    def ready(port: int) -> None:
        announce(f"{_PROG}: ready http={args.host}:{port} data={root.resolve()}")

    try:
        serve_api(root, host=args.host, port=args.ui_port, auth_token=token, on_ready=ready)
    except (OSError, QueryError) as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def serve_api(
    root: Path,
    *,
    host: str,
    port: int,
    auth_token: str | None,
    on_ready: Callable[[int], None],
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
    parent_sentinel: int | None = None,
) -> None:
    """Serves the API on `host:port` until one of `stop_signals` arrives, or until `parent_sentinel`
    (a `multiprocessing` parent's sentinel) becomes readable; `on_ready` gets the bound port.
    Raises OSError or QueryError when it cannot start."""
    app = create_api(root, auth_token=auth_token)
    with _listen(host, port) as sock:
        ready = functools.partial(on_ready, sock.getsockname()[1])
        asyncio.run(_serve(app, sock, ready, stop_signals, parent_sentinel))


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers (they re-raise SIGTERM after shutdown)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve(
    app: FastAPI,
    sock: socket.socket,
    on_ready: Callable[[], None],
    stop_signals: tuple[signal.Signals, ...],
    parent_sentinel: int | None,
) -> None:
    server = _QuietServer(
        uvicorn.Config(
            app, lifespan="on", access_log=False, log_level="warning", timeout_graceful_shutdown=10
        )
    )
    loop = asyncio.get_running_loop()
    for sig in stop_signals:
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    if parent_sentinel is not None:

        def parent_gone() -> None:
            loop.remove_reader(parent_sentinel)
            logger.error("the parent process is gone (killed?): the HTTP API stops")
            server.should_exit = True

        # readable once the parent has exited, even by kill -9: no orphan API beside a restarted one
        loop.add_reader(parent_sentinel, parent_gone)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        on_ready()
    await task


def _listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock
