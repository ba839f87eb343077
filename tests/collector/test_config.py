"""Collector settings: flag → `MALLARD_*` env var → TOML file → default, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import run_cli

from mallard.collector.config import (
    SETTINGS,
    CollectorConfig,
    ConfigError,
    env_var,
    flag,
    load_config,
    parse_size,
)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mallard.toml"
    path.write_text(text)
    return path


def test_defaults_come_from_the_dataclass() -> None:
    assert load_config({}, env={}) == CollectorConfig()


def test_flag_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "grpc_port = 1111\nhttp_port = 2222\nflush_interval = 0.5\n")
    env = {"MALLARD_GRPC_PORT": "3333", "MALLARD_HTTP_PORT": "4444"}
    config = load_config({"grpc_port": "5555"}, env=env, config_file=path)
    assert config.grpc_port == 5555  # flag over env and file
    assert config.http_port == 4444  # env over file
    assert config.flush_interval == 0.5  # file over default
    assert config.workers == CollectorConfig().workers  # default


def test_unset_flags_fall_through(tmp_path: Path) -> None:
    # argparse leaves every flag not given as None; those must not hide the env var or file
    flags = {setting.name: None for setting in SETTINGS} | {"config": None, "command": "serve"}
    config = load_config(flags, env={"MALLARD_WAL_FSYNC": "never"}, config_file=None)
    assert config.wal_fsync == "never"


def test_config_file_from_the_env(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'auth_token = "from-file"\nmax_request_bytes = "2MiB"\n')
    config = load_config({}, env={"MALLARD_CONFIG": str(path)})
    assert config.auth_token == "from-file"
    assert config.max_request_bytes == 2 << 20


def test_toml_values_of_every_type_parse(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'data = "store"\nworkers = 2\nflush_interval = 1.5\nmax_queue_bytes = 1024\n'
        'wal_segment_bytes = "8MiB"\nlog_level = "debug"\ntls_cert = "c.pem"\ntls_key = "k.pem"\n',
    )
    config = load_config({}, env={}, config_file=path)
    assert config.data == Path("store")
    assert config.workers == 2
    assert config.flush_interval == 1.5
    assert config.max_queue_bytes == 1024
    assert config.wal_segment_bytes == 8 << 20
    assert config.log_level == "debug"
    assert (config.tls_cert, config.tls_key) == (Path("c.pem"), Path("k.pem"))


def test_unknown_toml_key_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "grpc_port = 4317\nflush_intervall = 2\n")
    with pytest.raises(ConfigError, match="flush_intervall"):
        load_config({}, env={}, config_file=path)


def test_unreadable_or_invalid_toml_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config({}, env={}, config_file=tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config({}, env={}, config_file=write_toml(tmp_path, "grpc_port = \n"))


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"grpc_port": "70000"}, "grpc_port"),
        ({"http_port": "-1"}, "http_port"),
        ({"grpc_port": "four"}, "--grpc-port"),
        ({"max_request_bytes": "-5"}, "--max-request-bytes"),
        ({"max_queue_bytes": "0"}, "max_queue_bytes"),
        ({"flush_bytes": "12 parsecs"}, "--flush-bytes"),
        ({"wal_segment_bytes": "1.5MiB"}, "--wal-segment-bytes"),
        ({"flush_rows": "-10"}, "flush_rows"),
        ({"flush_interval": "0"}, "flush_interval"),
        ({"flush_interval": "nan"}, "flush_interval"),
        ({"workers": "0"}, "workers"),
        ({"wal_fsync": "sometimes"}, "wal_fsync"),
        ({"log_level": "loud"}, "log_level"),
        ({"tls_cert": "cert.pem"}, "tls_key"),
    ],
)
def test_bad_flag_values_name_the_setting(flags: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(flags, env={})


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="MALLARD_MAX_DECOMPRESSED_BYTES"):
        load_config({}, env={"MALLARD_MAX_DECOMPRESSED_BYTES": "lots"})


def test_bad_file_value_names_the_file_and_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "max_request_bytes = -5\n")
    with pytest.raises(ConfigError, match=r"mallard\.toml:max_request_bytes"):
        load_config({}, env={}, config_file=path)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("1024", 1024),
        ("100B", 100),
        ("1KiB", 1 << 10),
        ("512KiB", 512 << 10),
        ("2k", 2 << 10),
        ("2kb", 2 << 10),
        ("16M", 16 << 20),
        ("16MiB", 16 << 20),
        ("16 MiB", 16 << 20),
        ("1G", 1 << 30),
        ("1GiB", 1 << 30),
    ],
)
def test_size_suffixes_parse(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1", "1.5M", "1TiB", "MiB", "12 parsecs"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_every_setting_has_a_flag_and_env_var_name() -> None:
    names = {setting.name for setting in SETTINGS}
    assert names == {f.name for f in CollectorConfig.__dataclass_fields__.values()}
    assert flag("max_queue_bytes") == "--max-queue-bytes"
    assert env_var("max_queue_bytes") == "MALLARD_MAX_QUEUE_BYTES"


def test_serve_with_a_bad_port_exits_2_with_one_line() -> None:
    result = run_cli(["serve", "--grpc-port", "99999"])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "grpc_port" in lines[0]
    assert "99999" in lines[0]
    assert result.stdout == ""
