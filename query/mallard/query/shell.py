"""The `mallard shell` command: an interactive SQL prompt over a store's views.

`mallard.app.cli` owns the top-level parser; it calls `add_shell_arguments` on its `shell` sub-parser
and `run_shell` with the parsed arguments.

| setting | flag | env var | default |
|---|---|---|---|
| store root | `--data DIR` | `MALLARD_DATA` | `./mallard-data` |

Input is read line by line from stdin and collected until a `;` outside quotes and comments ends a
statement; each statement's result is printed with `format_table` (statements without a result,
such as `SET`, print nothing). Text left without a `;` at end of input runs too. Lines starting with
`.` at the start of a statement are commands: `.tables`, `.help`, `.exit`, `.quit`. On a terminal
the prompt is `mallard> ` (`   ...> ` inside a statement) with readline line editing; with stdin
piped no prompt is printed, so `echo "select 1;" | mallard shell` prints just the table.

Failure behaviour: a statement DuckDB rejects, or an unknown command, prints `Error: <reason>` (one
line) on stderr and the shell reads on. Ctrl-C drops the statement being typed (or stops the running
query) and returns to the prompt; Ctrl-D, `.exit` or `.quit` leave. The exit status is 0, except
with stdin piped, where it is 2 if any statement or command failed (so scripts notice).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from typing import Final, TextIO

from mallard.query.cli import EXIT_BAD_QUERY, add_data_argument, one_line, open_data_dir
from mallard.query.engine import Store
from mallard.query.errors import QueryError
from mallard.query.output import format_table

PROMPT: Final = "mallard> "
CONTINUATION_PROMPT: Final = "   ...> "
HELP: Final = """\
Statements end with ';' and may span several lines. Views: spans, metrics, logs.
.tables   list the views and tables
.help     show this message
.exit     leave the shell (also .quit and Ctrl-D)
"""
_PROG: Final = "mallard shell"
_TABLES_SQL: Final = (
    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY table_name"
)


class SqlShell:
    """The read-eval-print loop's state: the statement being typed and what each line does.

    `feed` takes one line of input and returns False once the user asked to leave.
    """

    def __init__(self, store: Store, *, out: TextIO, err: TextIO) -> None:
        self._store = store
        self._out = out
        self._err = err
        self._pending = ""
        self.failures = 0

    @property
    def prompt(self) -> str:
        return CONTINUATION_PROMPT if self._pending.strip() else PROMPT

    def feed(self, line: str) -> bool:
        """Handles one line (without its line break); False when it was `.exit` or `.quit`."""
        if not self._pending.strip() and line.strip().startswith("."):
            self._pending = ""
            return self._command(line.strip())
        statements, self._pending = split_statements(self._pending + line + "\n")
        for statement in statements:
            self._execute(statement)
        return True

    def finish(self) -> None:
        """At end of input: runs what is left of an unterminated statement."""
        rest, self._pending = self._pending, ""
        if rest.strip():
            self._execute(rest)

    def cancel(self) -> None:
        """Drops the statement being typed (Ctrl-C)."""
        self._pending = ""

    def _execute(self, statement: str) -> None:
        try:
            table = self._store.sql(statement)
        except QueryError as error:
            self._error(str(error))
            return
        if table.num_columns:
            self._out.write(format_table(table))
        self._out.flush()

    def _command(self, line: str) -> bool:
        name = line.split(maxsplit=1)[0].rstrip(";")
        if name in (".exit", ".quit"):
            return False
        if name == ".help":
            self._out.write(HELP)
        elif name == ".tables":
            try:
                names = self._store.sql(_TABLES_SQL).column(0).to_pylist()
            except QueryError as error:
                self._error(str(error))
                return True
            self._out.write("".join(f"{table}\n" for table in names))
        else:
            self._error(f"unknown command {name}; .help lists the commands")
        self._out.flush()
        return True

    def _error(self, message: str) -> None:
        self.failures += 1
        self._err.write(f"Error: {one_line(message)}\n")
        self._err.flush()


def split_statements(text: str) -> tuple[list[str], str]:
    """The statements of `text` that a `;` outside quotes and comments ends, and the text after them.

    Blank statements (`;;`) are dropped; each statement keeps its `;`.
    """
    statements: list[str] = []
    start = 0
    index = 0
    quote = ""  # the quote character of the string or identifier we are in, if any
    while index < len(text):
        char = text[index]
        pair = text[index : index + 2]
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif pair == "--":
            end = text.find("\n", index)
            if end < 0:
                break
            index = end
        elif pair == "/*":
            end = text.find("*/", index + 2)
            if end < 0:
                break
            index = end + 1
        elif char == ";":
            statement = text[start : index + 1]
            if statement[:-1].strip():
                statements.append(statement.strip())
            start = index + 1
        index += 1
    return statements, text[start:]


def add_shell_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the arguments of `mallard shell` to `parser`."""
    add_data_argument(parser)


def run_shell(args: argparse.Namespace) -> int:
    """Runs the shell on stdin/stdout until `.exit` or end of input; returns the exit status."""
    interactive = sys.stdin.isatty()
    if interactive:
        _enable_line_editing()
    root = open_data_dir(args.data, prog=_PROG)
    try:
        store = Store(root)
    except QueryError as error:
        print(f"{_PROG}: error: {one_line(str(error))}", file=sys.stderr)
        return EXIT_BAD_QUERY
    with store:
        shell = SqlShell(store, out=sys.stdout, err=sys.stderr)
        if interactive:
            sys.stdout.write(f"mallard shell over {root}; .help for help, Ctrl-D to leave\n")
            _loop(shell, _read_with_prompt)
        else:
            _loop(shell, _read_piped)
    if not interactive and shell.failures:
        return EXIT_BAD_QUERY
    return 0


def _loop(shell: SqlShell, read_line: Callable[[str], str | None]) -> None:
    """Feeds lines from `read_line(prompt)` (None at end of input) to `shell` until it says stop."""
    while True:
        try:
            line = read_line(shell.prompt)
            if line is None:
                shell.finish()
                return
            if not shell.feed(line):
                return
        except KeyboardInterrupt:  # Ctrl-C: back to a fresh prompt, as every SQL shell does
            shell.cancel()
            sys.stdout.write("^C\n")
            sys.stdout.flush()


def _read_with_prompt(prompt: str) -> str | None:
    try:
        return input(prompt)
    except EOFError:
        sys.stdout.write("\n")
        return None


def _read_piped(prompt: str) -> str | None:
    line = sys.stdin.readline()
    return line.removesuffix("\n") if line else None


def _enable_line_editing() -> None:
    """Imports `readline` (line editing and history for `input()`) where this Python has it."""
    with contextlib.suppress(ImportError):  # e.g. Windows
        import readline  # noqa: F401
