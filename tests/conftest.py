"""Fixtures shared by every test folder; the helpers themselves live in `harness`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import MallardServer, start_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MallardServer]:
    """A collector with a short flush interval, stopped (and drained) after the test."""
    running = start_server(tmp_path / "data", "--flush-interval", "0.2")
    yield running
    if running.process.poll() is None:
        running.stop()
