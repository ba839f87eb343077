"""`mallard sql --format parquet --output FILE` and `mallard shell`, run as real subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from harness import run_cli

from mallard.query.shell import split_statements
from mallard.storage.schema import SPANS

START = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)
TRACE_IDS = ["4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c"]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A store with two spans in one committed file."""
    root = tmp_path / "data"
    directory = root / "v1" / "spans" / "date=2026-11-22" / "hour=10"
    directory.mkdir(parents=True)
    rows = []
    for number, trace_id in enumerate(TRACE_IDS):
        row: dict[str, object] = dict.fromkeys(SPANS.names)
        row.update(trace_id=trace_id, name=f"op{number}", start_time=START, attributes=[("k", "v")])
        rows.append(row)
    pq.write_table(
        pa.Table.from_pylist(rows, schema=SPANS),
        directory / "w0-0000000000000001-0000000000000002-ab.parquet",
    )
    return root


# --- mallard sql --format parquet -------------------------------------------------------------


def test_parquet_output_round_trips_with_microsecond_timestamps(data: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.parquet"
    query = (
        "SELECT trace_id, name, start_time, attributes,"
        " TIMESTAMP_NS '2026-11-22 10:00:00.123456789' AS nanos FROM spans ORDER BY name"
    )
    result = run_cli(["sql", "--data", str(data), "--format", "parquet", "--output", str(output), query])
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == f"wrote 2 rows to {output}\n"

    written = pq.read_table(output)
    assert written.column("trace_id").to_pylist() == TRACE_IDS
    assert written.column("name").to_pylist() == ["op0", "op1"]
    assert written.column("start_time").to_pylist() == [START, START]
    assert written.column("attributes").to_pylist() == [[("k", "v")], [("k", "v")]]
    for name in ("start_time", "nanos"):
        assert written.schema.field(name).type.unit == "us", name
    assert written.column("nanos").to_pylist()[0] == datetime(2026, 11, 22, 10, 0, 0, 123456)

    metadata = pq.ParquetFile(output).metadata
    assert metadata.row_group(0).column(0).compression == "ZSTD"
    leftovers = sorted(path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp"))
    assert leftovers == []


def test_parquet_output_of_no_rows_keeps_the_columns(data: Path, tmp_path: Path) -> None:
    output = tmp_path / "empty.parquet"
    query = "SELECT trace_id, start_time FROM spans WHERE false"
    result = run_cli(["sql", "--data", str(data), "--format", "parquet", "--output", str(output), query])
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"wrote 0 rows to {output}\n"
    written = pq.read_table(output)
    assert (written.num_rows, written.column_names) == (0, ["trace_id", "start_time"])


def test_parquet_without_output_is_a_one_line_error(data: Path) -> None:
    result = run_cli(["sql", "--data", str(data), "--format", "parquet", "SELECT 1"])
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "mallard sql: error: --format parquet needs --output FILE\n"


def test_a_bad_query_leaves_the_output_file_alone(data: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.parquet"
    output.write_bytes(b"before")
    result = run_cli(["sql", "--data", str(data), "--format", "parquet", "--output", str(output), "SELEC 1"])
    assert result.returncode == 2
    assert result.stderr.startswith("mallard sql: error: Parser Error")
    assert result.stderr.count("\n") == 1
    assert output.read_bytes() == b"before"


def test_a_result_parquet_cannot_hold_is_a_one_line_error(data: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.parquet"
    query = "SELECT INTERVAL 1 DAY AS i"
    result = run_cli(["sql", "--data", str(data), "--format", "parquet", "--output", str(output), query])
    assert result.returncode == 2
    assert result.stderr.startswith("mallard sql: error: cannot write the result as Parquet")
    assert result.stderr.count("\n") == 1
    assert list(tmp_path.glob("*out.parquet*")) == []


def test_an_unwritable_output_exits_1(data: Path, tmp_path: Path) -> None:
    output = tmp_path / "missing" / "out.parquet"
    result = run_cli(["sql", "--data", str(data), "--format", "parquet", "--output", str(output), "SELECT 1"])
    assert result.returncode == 1
    assert result.stderr.startswith(f"mallard sql: error: cannot write {output}")
    assert result.stderr.count("\n") == 1


def test_output_also_takes_text_formats(data: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.csv"
    query = "SELECT name FROM spans ORDER BY name"
    result = run_cli(["sql", "--data", str(data), "--format", "csv", "--output", str(output), query])
    assert (result.returncode, result.stdout) == (0, "")
    assert output.read_text() == "name\nop0\nop1\n"


# --- mallard shell, stdin piped ---------------------------------------------------------------


def test_piped_shell_prints_the_table_without_a_prompt(data: Path) -> None:
    result = run_cli(["shell", "--data", str(data)], input_text="select count(*) as n from spans;\n")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == " n\n---\n 2\n(1 row)\n"


def test_piped_shell_reports_a_bad_statement_and_runs_the_next(data: Path) -> None:
    session = (
        "select name from spans\n"  # a statement over three lines
        "  where name = 'op1'\n"
        "  ;\n"
        "select nope from spans;\n"
        "select 'a;b' as s; -- a comment; not a statement\n"
    )
    result = run_cli(["shell", "--data", str(data)], input_text=session)
    assert result.stdout == " name\n------\n op1\n(1 row)\n s\n-----\n a;b\n(1 row)\n"
    errors = result.stderr.splitlines()
    assert len(errors) == 1
    assert errors[0].startswith("Error: Binder Error") and "nope" in errors[0]
    assert result.returncode == 2  # piped: a failed statement is reported in the exit status


def test_piped_shell_lists_tables_and_stops_at_exit(data: Path) -> None:
    session = ".tables\n.help\n.exit\nselect 'never run';\n"
    result = run_cli(["shell", "--data", str(data)], input_text=session)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[:7] == [
        "attribute_index",
        "logs",
        "metrics",
        "spans",
        "trace_index",
        "trace_rows",
        "traces",
    ]
    assert any(line.startswith(".tables") for line in lines)
    assert "never run" not in result.stdout


def test_piped_shell_runs_an_unterminated_last_statement_and_rejects_unknown_commands(data: Path) -> None:
    result = run_cli(["shell", "--data", str(data)], input_text=".bogus\nselect 7 as n")
    assert result.stdout == " n\n---\n 7\n(1 row)\n"
    assert result.stderr == "Error: unknown command .bogus; .help lists the commands\n"
    assert result.returncode == 2


def test_split_statements_ignores_semicolons_in_quotes_and_comments() -> None:
    text = "select ';' as \"a;b\"; /* ; */ select 2 -- ;\n;; select"
    assert split_statements(text) == (["select ';' as \"a;b\";", "/* ; */ select 2 -- ;\n;"], " select")
    assert split_statements("select 'it''s;'") == ([], "select 'it''s;'")


# --- mallard shell on a terminal (tmux) -------------------------------------------------------


class Terminal:
    """A tmux pane on a private server socket, running one command."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30, check=False
        )

    def type(self, line: str) -> None:
        """Types `line` literally, then Enter. tmux reads an argument's trailing `;` as its own command
        separator, so that one is escaped."""
        if line.endswith(";"):
            line = line[:-1] + "\\;"
        assert self.tmux("send-keys", "-t", "shell", "-l", line).returncode == 0
        self.press("Enter")

    def press(self, key: str) -> None:
        assert self.tmux("send-keys", "-t", "shell", key).returncode == 0

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "shell", "-S", "-200").stdout

    def wait_for(self, text: str, *, count: int = 1, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if screen.count(text) >= count:
                return screen
            assert time.monotonic() < deadline, f"{text!r} did not appear:\n{screen}"
            time.sleep(0.05)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed; the interactive shell needs a terminal to test")
    pane = Terminal(f"mallard-test-{os.getpid()}-{tmp_path.name}")
    yield pane
    pane.tmux("kill-server")


def test_interactive_shell_on_a_terminal(data: Path, tmp_path: Path, terminal: Terminal) -> None:
    status = tmp_path / "status"
    command = f"{sys.executable} -m mallard.app.cli shell --data {data}; echo $? > {status}"
    started = terminal.tmux("new-session", "-d", "-s", "shell", "-x", "160", "-y", "50", "sh", "-c", command)
    assert started.returncode == 0, started.stderr
    terminal.wait_for("mallard>")  # capture-pane drops trailing blanks

    terminal.type("select count(*) as n")
    terminal.wait_for("   ...>")  # no ';' yet: the statement goes on
    terminal.type("from spans;")
    screen = terminal.wait_for("(1 row)")
    assert " 2" in screen.splitlines()

    terminal.type("selec 1;")
    terminal.wait_for("Error: Parser Error")
    terminal.type(".tables")
    terminal.wait_for("metrics")
    terminal.type("select 40 + 2 as answer;")
    terminal.wait_for("(1 row)", count=2)
    assert "     42" in terminal.screen().splitlines()

    terminal.press("C-d")
    deadline = time.monotonic() + 30
    while not status.exists() or not status.read_text().strip():
        assert time.monotonic() < deadline, "the shell did not leave on Ctrl-D:\n" + terminal.screen()
        time.sleep(0.05)
    assert status.read_text().strip() == "0"
