"""The HTTP API as a child process of `mallard serve`: started before the collector, stopped after it.

The child runs `mallard.app.ui.serve_api` on the collector's store, host and auth token. It reports
its bound port (or why it could not start) over a pipe, stops on SIGTERM, ignores SIGINT (Ctrl-C
reaches the whole process group; the parent stops the API only once the collector has drained), and
stops by itself when the parent dies, even by `kill -9`.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

_READY_TIMEOUT_S: Final = 120.0
_STOP_TIMEOUT_S: Final = 15.0  # uvicorn's graceful shutdown is 10 s


class ApiStartError(Exception):
    """The HTTP API child did not come up."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    data: Path
    host: str
    port: int
    auth_token: str | None
    log_level: str


class ApiProcess:
    """A running HTTP API child; `start()` returns once it accepts requests."""

    def __init__(self, process: BaseProcess, port: int) -> None:
        self._process = process
        self.port = port

    @classmethod
    def start(cls, settings: ApiSettings) -> ApiProcess:
        """Raises ApiStartError (the child has exited by then)."""
        context = multiprocessing.get_context("spawn")
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(target=_api_main, args=(settings, writer), name="mallard-api")
        process.start()
        writer.close()  # so that reading gets EOF once the child is gone
        with reader:
            try:
                if not reader.poll(_READY_TIMEOUT_S):
                    raise ApiStartError(f"the HTTP API did not start within {_READY_TIMEOUT_S:.0f} s")
                answer = reader.recv()
            except EOFError:
                answer = None
            except ApiStartError:
                _end(process)
                raise
        if not isinstance(answer, int):
            _end(process)
            reason = answer if isinstance(answer, str) else f"its process exited with {process.exitcode}"
            raise ApiStartError(f"cannot start the HTTP API: {reason}")
        return cls(process, answer)

    def stop(self) -> int:
        """SIGTERM, then waits for requests in flight; returns the child's exit code (0: clean)."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(_STOP_TIMEOUT_S)
        if self._process.is_alive():
            logger.error("the HTTP API did not stop within %.0f s; killing it", _STOP_TIMEOUT_S)
            self._process.kill()
            self._process.join()
        return self._process.exitcode or 0


def _end(process: BaseProcess) -> None:
    process.terminate()
    process.join(_STOP_TIMEOUT_S)
    if process.is_alive():
        process.kill()
        process.join()


def _api_main(settings: ApiSettings, ready: Connection) -> None:
    from mallard.app.ui import serve_api
    from mallard.collector.supervisor import configure_logging
    from mallard.query.errors import QueryError

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings.log_level)
    parent = multiprocessing.parent_process()
    try:
        serve_api(
            settings.data,
            host=settings.host,
            port=settings.port,
            auth_token=settings.auth_token,
            on_ready=ready.send,
            stop_signals=(signal.SIGTERM,),
            parent_sentinel=parent.sentinel if parent is not None else None,
        )
    except (OSError, QueryError) as exc:
        ready.send(str(exc))
        raise SystemExit(1) from None
    finally:
        ready.close()
