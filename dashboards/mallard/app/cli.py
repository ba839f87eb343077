"""`mallard`: the command line. Each subcommand imports only the stages it runs."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from mallard.app.api_process import ApiProcess, ApiSettings, ApiStartError

if TYPE_CHECKING:
    from mallard.app.maintenance import MaintenanceProcess
    from mallard.collector.config import CollectorConfig


def _version() -> str:
    try:
        return version("mallard")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    from mallard.app.demo import add_demo_arguments
    from mallard.app.maintenance import add_compact_arguments
    from mallard.app.ui import add_ui_arguments
    from mallard.collector.config import add_arguments
    from mallard.query.cli import add_sql_arguments
    from mallard.query.shell import add_shell_arguments

    parser = argparse.ArgumentParser(
        prog="mallard",
        description="OpenTelemetry-native collector and backend: OTLP in, Parquet out, SQL through DuckDB.",
    )
    parser.add_argument("--version", action="version", version=f"mallard {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the OTLP collector (gRPC and HTTP) and the HTTP API on a store",
        description="Receive OTLP traces, metrics and logs over gRPC and HTTP and store them as Parquet; "
        "serve the HTTP API (as `mallard ui` does) on --ui-port unless --ui false. "
        "Every flag is also a MALLARD_* environment variable and a key of the --config TOML file.",
    )
    add_arguments(serve)
    sql = commands.add_parser(
        "sql",
        help="run SQL over the store's spans, metrics and logs views",
        description="Run SQL through DuckDB over the views spans, metrics and logs.",
    )
    add_sql_arguments(sql)
    shell = commands.add_parser(
        "shell",
        help="an interactive SQL prompt over the store's spans, metrics and logs views",
        description="Read SQL statements (ending with ';') from stdin and print each result. "
        "Commands: .tables, .help, .exit.",
    )
    add_shell_arguments(shell)
    ui = commands.add_parser(
        "ui",
        help="serve the HTTP API (/api/v1/..., docs at /docs) over a store",
        description="Serve the HTTP API over a store: traces, services, service map and read-only SQL, "
        "with OpenAPI docs at /docs.",
    )
    add_ui_arguments(ui)
    compact = commands.add_parser(
        "compact",
        help="compact closed hours into large sorted files, build the traces table, apply retention",
        description="Merge the small files of every closed hour into large sorted ones and build the "
        "traces summary table from their spans; with --retention, first drop hours older than that. "
        "Safe while mallard serve and queries run (mallard serve also does this every "
        "--compact-interval seconds).",
    )
    add_compact_arguments(compact)
    demo = commands.add_parser(
        "demo",
        help="run sample workloads (Flask services, an LLM app, PyTorch training, a model with labels)",
        description="Run instrumented sample workloads against a running mallard serve (--endpoint) or "
        "against one of its own on a temporary store, so that every dashboard has data within a minute.",
    )
    add_demo_arguments(demo)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from mallard.collector.config import ConfigError, load_config
    from mallard.collector.errors import CollectorError
    from mallard.collector.supervisor import configure_logging, serve

    try:
        config = load_config(vars(args), config_file=args.config)
    except ConfigError as exc:
        print(f"mallard serve: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    try:
        api = _start_api(config) if config.ui else None
    except (OSError, ApiStartError) as exc:
        print(f"mallard serve: error: {exc}", file=sys.stderr)
        return 1
    maintenance = _start_maintenance(config) if config.compact_interval > 0 else None
    suffix = f" ui={config.host}:{api.port}" if api is not None else ""

    def announce(line: str) -> None:
        print(line + suffix, flush=True)

    try:
        code = serve(config, announce=announce)
    except (OSError, CollectorError) as exc:
        print(f"mallard serve: error: {exc}", file=sys.stderr)
        code = 1
    finally:  # the collector has drained (or failed): only now stop the API
        if maintenance is not None:
            maintenance.stop()
        api_code = api.stop() if api is not None else 0
    if api_code != 0:
        print(f"mallard serve: error: the HTTP API exited with {api_code}", file=sys.stderr)
    return code or (1 if api_code else 0)


def _start_api(config: CollectorConfig) -> ApiProcess:
    config.data.mkdir(parents=True, exist_ok=True)
    settings = ApiSettings(
        data=config.data,
        host=config.host,
        port=config.ui_port,
        auth_token=config.auth_token,
        log_level=config.log_level,
    )
    return ApiProcess.start(settings)


def _start_maintenance(config: CollectorConfig) -> MaintenanceProcess:
    from mallard.app.maintenance import MaintenanceProcess, MaintenanceSettings

    config.data.mkdir(parents=True, exist_ok=True)
    settings = MaintenanceSettings(
        data=config.data,
        interval_s=config.compact_interval,
        retention=config.retention,
        log_level=config.log_level,
    )
    return MaintenanceProcess.start(settings)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "ui":
        from mallard.app.ui import run_ui

        return run_ui(args, announce=lambda line: print(line, flush=True))
    if args.command == "compact":
        from mallard.app.maintenance import run_compact

        return run_compact(args)
    if args.command == "demo":
        from mallard.app.demo import run_demo

        return run_demo(args)
    if args.command == "shell":
        from mallard.query.shell import run_shell

        return run_shell(args)
    from mallard.query.cli import run_sql

    return run_sql(args)


if __name__ == "__main__":
    sys.exit(main())
