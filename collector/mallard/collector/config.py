"""Collector settings: one frozen dataclass, filled from CLI flag → `MALLARD_*` env var → TOML → default.

`SETTINGS` is the single table of every setting; the CLI flags, the env var names and the docs
(`collector/README.md`, checked by a test) all come from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from mallard.collector.pricing import PricingError, load_prices
from mallard.storage.retention import parse_retention


class ConfigError(Exception):
    """A setting is unknown, malformed or out of range."""


_SIZE_RE: Final = re.compile(r"^\s*(\d+)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS: Final = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """`16777216`, `16MiB`, `16M` or `512KiB` as a byte count."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (e.g. 16MiB)")
    unit = (match[2] or "").upper()[:1]
    return int(match[1]) * _UNITS[unit]


def _text_or_none(text: str) -> str | None:
    return text or None


def _retention(text: str) -> tuple[tuple[str, float], ...]:
    return tuple(parse_retention(text).items())


def _path_or_none(text: str) -> Path | None:
    return Path(text) if text else None


def parse_bool(text: str) -> bool:
    """`true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`), any case."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (true or false)")


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    name: str
    parse: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None


SETTINGS: Final = (
    Setting(name="data", parse=Path, help="store root (Parquet files and WAL)"),
    Setting(name="host", parse=str, help="address both receivers listen on"),
    Setting(name="grpc_port", parse=int, help="OTLP/gRPC port (0 picks a free one)"),
    Setting(name="http_port", parse=int, help="OTLP/HTTP port, also /healthz /readyz /metrics (0: free)"),
    Setting(name="workers", parse=int, help="collector processes sharing the ports (SO_REUSEPORT)"),
    Setting(
        name="wal_fsync",
        parse=str,
        choices=("always", "interval", "never"),
        help="always: fsync before every ack (group commit); interval: every 200 ms; never",
    ),
    Setting(name="wal_segment_bytes", parse=parse_size, help="size at which a WAL segment is closed"),
    Setting(
        name="wal_lock_timeout",
        parse=float,
        help="seconds a worker waits for another process to release its WAL before failing",
    ),
    Setting(name="flush_interval", parse=float, help="seconds rows wait at most before a Parquet flush"),
    Setting(name="flush_rows", parse=int, help="rows of one table that trigger a flush"),
    Setting(name="flush_bytes", parse=parse_size, help="Arrow bytes of one table that trigger a flush"),
    Setting(
        name="max_queue_bytes",
        parse=parse_size,
        help="acked bytes waiting for Parquet before requests get 429/RESOURCE_EXHAUSTED",
    ),
    Setting(name="max_request_bytes", parse=parse_size, help="largest request body (413 above)"),
    Setting(name="max_decompressed_bytes", parse=parse_size, help="largest body after gzip (413 above)"),
    Setting(
        name="max_attributes",
        parse=int,
        help="attributes per item, resource or scope; items above, or under one above, are rejected",
    ),
    Setting(name="max_attribute_depth", parse=int, help="nesting depth of array/kvlist values"),
    Setting(
        name="max_concurrent_requests",
        parse=int,
        help="requests a worker handles at once; more get RESOURCE_EXHAUSTED/503",
    ),
    Setting(
        name="self_metrics_interval",
        parse=float,
        help="seconds between writes of the collector's own metrics to the store (0: off)",
    ),
    Setting(
        name="cors_allowed_origins",
        parse=lambda text: tuple(o.strip() for o in text.split(",") if o.strip()),
        help="comma-separated origins browsers may send OTLP/HTTP from ('*' for any; empty: CORS off)",
    ),
    Setting(name="auth_token", parse=_text_or_none, help="bearer token both receivers require"),
    Setting(name="tls_cert", parse=_path_or_none, help="PEM certificate: serve both receivers over TLS"),
    Setting(name="tls_key", parse=_path_or_none, help="PEM private key for --tls-cert"),
    Setting(name="log_level", parse=str, choices=("debug", "info", "warning", "error"), help="log level"),
    Setting(
        name="ui",
        parse=parse_bool,
        help="also serve the HTTP API (`mallard ui`) from `mallard serve`: true or false",
    ),
    Setting(name="ui_port", parse=int, help="HTTP API port, same host and auth token (0: free)"),
    Setting(
        name="retention",
        parse=_retention,
        help="maximum age of the data: '7d' for every table, or 'spans=7d,metrics=30d,logs=3d'; "
        "whole hours are dropped (empty: keep everything)",
    ),
    Setting(
        name="prices",
        parse=_path_or_none,
        help="TOML price table laid over the built-in one (USD per million tokens per model), which "
        "prices each LLM span's gen_ai_cost_usd at ingest",
    ),
    Setting(
        name="compact_interval",
        parse=float,
        help="seconds between maintenance runs (compaction of closed hours, retention); 0: off",
    ),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectorConfig:
    data: Path = Path("mallard-data")
    host: str = "127.0.0.1"
    grpc_port: int = 4317
    http_port: int = 4318
    workers: int = 1
    wal_fsync: str = "always"
    wal_segment_bytes: int = 64 << 20
    wal_lock_timeout: float = 30.0
    flush_interval: float = 2.0
    flush_rows: int = 250_000
    flush_bytes: int = 64 << 20
    max_queue_bytes: int = 256 << 20
    max_request_bytes: int = 16 << 20
    max_decompressed_bytes: int = 64 << 20
    max_attributes: int = 1024
    max_attribute_depth: int = 16
    max_concurrent_requests: int = 128
    self_metrics_interval: float = 15.0
    cors_allowed_origins: tuple[str, ...] = ()
    auth_token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    log_level: str = "info"
    ui: bool = True
    ui_port: int = 8686
    retention: tuple[tuple[str, float], ...] = ()
    prices: Path | None = None
    compact_interval: float = 300.0

    def validate(self) -> CollectorConfig:
        for name in ("grpc_port", "http_port", "ui_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be 0..65535, not {port}")
        positive = (
            "workers",
            "wal_segment_bytes",
            "flush_rows",
            "flush_bytes",
            "max_queue_bytes",
            "max_request_bytes",
            "max_decompressed_bytes",
            "max_attributes",
            "max_attribute_depth",
            "max_concurrent_requests",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)}")
        if not self.flush_interval > 0:  # also refuses nan
            raise ConfigError(f"flush_interval must be positive, not {self.flush_interval}")
        for name in ("self_metrics_interval", "wal_lock_timeout", "compact_interval"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be 0 or more, not {getattr(self, name)}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key go together")
        for setting in SETTINGS:
            if setting.choices and getattr(self, setting.name) not in setting.choices:
                raise ConfigError(f"{setting.name} must be one of {', '.join(setting.choices)}")
        if self.prices is not None:  # read now, so a bad file stops `mallard serve` before it starts
            try:
                load_prices(self.prices)
            except PricingError as exc:
                raise ConfigError(f"prices: {exc}") from None
        return self


def env_var(name: str) -> str:
    return f"MALLARD_{name.upper()}"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; defaults stay None so env, file and code defaults can apply."""
    parser.add_argument("--config", type=Path, help="TOML file of settings (keys as in the table)")
    defaults = CollectorConfig()
    for setting in SETTINGS:
        default = getattr(defaults, setting.name)
        parser.add_argument(
            flag(setting.name),
            dest=setting.name,
            default=None,
            choices=setting.choices,
            help=f"{setting.help} [env {env_var(setting.name)}; default {default}]",
        )


def load_config(
    flags: Mapping[str, Any], *, env: Mapping[str, str] | None = None, config_file: Path | None = None
) -> CollectorConfig:
    """Flag → env var → TOML file → default, then `validate()`; raises ConfigError."""
    env = os.environ if env is None else env
    from_file: dict[str, Any] = {}
    path = config_file or (Path(env[env_var("config")]) if env_var("config") in env else None)
    if path is not None:
        try:
            from_file = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        known = {s.name for s in SETTINGS}
        unknown = sorted(set(from_file) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) in {path}: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw: Any = flags.get(setting.name)
        source = flag(setting.name)
        if raw is None and env_var(setting.name) in env:
            raw, source = env[env_var(setting.name)], env_var(setting.name)
        if raw is None and setting.name in from_file:
            raw, source = from_file[setting.name], f"{path}:{setting.name}"
        if raw is None:
            continue
        try:
            values[setting.name] = setting.parse(str(raw)) if not isinstance(raw, bool) else raw
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return dataclasses.replace(CollectorConfig(), **values).validate()
