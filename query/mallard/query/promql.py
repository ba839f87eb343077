"""A PromQL subset: lexer, parser into a small AST, and Prometheus' static type checks.

`parse(text)` answers the expression tree or raises `PromQLError` (a malformed or ill-typed query)
or its subclass `UnsupportedPromQL` (valid PromQL outside the subset); both carry the position as
`line:column`. The subset (see `docs/prometheus.md`):

- number literals (`1`, `2.5e3`, `0x1f`, `Inf`, `NaN`), parentheses, unary `-`/`+`;
- instant vector selectors `name{label="v", label!="v", label=~"re", label!~"re"}` (a regex matches
  the whole value, as `^(?:re)$`), `{__name__="..."}` and Prometheus 3's quoted names
  `{"http.server.duration", "http.route"="/a"}`;
- range vectors `selector[5m]`, and `offset 5m` after either;
- `rate(range)`, `increase(range)`, `histogram_quantile(φ, vector)`;
- `sum`, `avg`, `min`, `max`, `count` with `by (...)` or `without (...)` before or after the argument;
- `+ - * /` between scalars and vectors (vector-vector matching on identical label sets).

Everything else that is PromQL (other functions and aggregations, comparisons, `and`/`or`/`unless`,
`%`, `^`, `on`/`ignoring`/`group_left`, `@`, subqueries, string literals) raises `UnsupportedPromQL`
naming the construct.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Final, Literal

from mallard.query.timerange import InvalidArgument

ValueType = Literal["scalar", "vector", "matrix"]
MatchOp = Literal["=", "!=", "=~", "!~"]

AGGREGATIONS: Final = frozenset({"sum", "avg", "min", "max", "count"})
FUNCTIONS: Final = frozenset({"rate", "increase", "histogram_quantile"})
_OTHER_AGGREGATIONS: Final = frozenset(
    {"stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group", "limitk", "limit_ratio"}
)
_OTHER_FUNCTIONS: Final = frozenset(  # the rest of PromQL's functions, for a clear error
    """abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp
    clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month
    deg delta deriv double_exponential_smoothing exp floor histogram_avg histogram_count
    histogram_fraction histogram_stddev histogram_stdvar histogram_sum holt_winters hour idelta info
    irate label_join label_replace last_over_time ln log10 log2 mad_over_time max_over_time
    min_over_time minute month pi predict_linear present_over_time quantile_over_time rad resets
    round scalar sgn sin sinh sort sort_by_label sort_by_label_desc sort_desc sqrt stddev_over_time
    stdvar_over_time sum_over_time tan tanh time timestamp vector year""".split()  # noqa: SIM905
)
_BINARY_PRECEDENCE: Final = {"+": 1, "-": 1, "*": 2, "/": 2}
_UNSUPPORTED_BINARY: Final = frozenset(
    {"%", "^", "==", "!=", "<", ">", "<=", ">=", "and", "or", "unless", "atan2"}
)
_DURATION_UNITS_MS: Final = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
    "y": 31_536_000_000,
}


class PromQLError(InvalidArgument):
    """A query that does not parse or type-check; the message starts with the position."""


class UnsupportedPromQL(PromQLError):
    """Valid PromQL outside mallard's subset; the message names the construct."""


# --- the tree ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Matcher:
    name: str
    op: MatchOp
    value: str
    regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def matches(self, text: str) -> bool:
        """Whether a label value (`''` when the label is absent) satisfies the matcher."""
        if self.op == "=":
            return text == self.value
        if self.op == "!=":
            return text != self.value
        assert self.regex is not None
        found = self.regex.fullmatch(text) is not None
        return found if self.op == "=~" else not found


@dataclass(frozen=True, slots=True, kw_only=True)
class NumberLiteral:
    value: float


@dataclass(frozen=True, slots=True, kw_only=True)
class VectorSelector:
    matchers: tuple[Matcher, ...]  # the metric name is a `__name__` matcher
    offset_ms: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class MatrixSelector:
    vector: VectorSelector
    range_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    function: str
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Aggregate:
    op: str
    expr: Expr
    grouping: tuple[str, ...] = ()
    without: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Binary:
    op: str
    lhs: Expr
    rhs: Expr


@dataclass(frozen=True, slots=True, kw_only=True)
class Unary:
    op: str  # '-' (a unary '+' is dropped)
    expr: Expr


Expr = NumberLiteral | VectorSelector | MatrixSelector | Call | Aggregate | Binary | Unary


def value_type(expr: Expr) -> ValueType:
    """The PromQL type of a (type-checked) expression."""
    if isinstance(expr, NumberLiteral):
        return "scalar"
    if isinstance(expr, MatrixSelector):
        return "matrix"
    if isinstance(expr, Binary):
        both = (value_type(expr.lhs), value_type(expr.rhs))
        return "scalar" if both == ("scalar", "scalar") else "vector"
    if isinstance(expr, Unary):
        return value_type(expr.expr)
    return "vector"


def parse_duration_ms(text: str) -> int | None:
    """A PromQL duration (`5m`, `1h30m`, `250ms`) in milliseconds, or None when `text` is not one."""
    if not _DURATION.fullmatch(text):
        return None
    return sum(int(number) * _DURATION_UNITS_MS[unit] for number, unit in _DURATION_PART.findall(text))


# --- the lexer --------------------------------------------------------------------------------

_DURATION: Final = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d|w|y))+")
_DURATION_PART: Final = re.compile(r"([0-9]+)(ms|s|m|h|d|w|y)")
_TOKEN: Final = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
    |(?P<duration>(?:[0-9]+(?:ms|s|m|h|d|w|y))+(?![a-zA-Z0-9_.]))
    |(?P<number>0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)
    |(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
    |(?P<op>=~|!~|!=|==|<=|>=|[-+*/%^=<>(){}\[\],:@])
    """,
    re.VERBOSE,
)
_ESCAPES: Final = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_ESCAPE: Final = re.compile(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|[0-7]{3}|.)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # duration, number, ident, string, op, end
    text: str
    at: int  # offset in the query


def _tokens(text: str) -> list[_Token]:
    found: list[_Token] = []
    at = 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise _error(text, at, f"unexpected character {text[at]!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            found.append(_Token(kind, match.group(), at))
        at = match.end()
    found.append(_Token("end", "", len(text)))
    return found


def _unquote(text: str) -> str:
    """The value of a string literal; raises `ValueError` for an unknown escape."""
    if text[0] == "`":
        return text[1:-1]

    def escape(match: re.Match[str]) -> str:
        code = match[1]
        if code[0] in "uUx":
            return chr(int(code[1:], 16))
        if len(code) == 3:
            return chr(int(code, 8))
        if code in _ESCAPES:
            return _ESCAPES[code]
        if code in ("\\", '"', "'"):
            return code
        raise ValueError(f"unknown escape sequence \\{code}")

    return _ESCAPE.sub(escape, text[1:-1])


def _error(text: str, at: int, message: str, unsupported: bool = False) -> PromQLError:
    line = text.count("\n", 0, at) + 1
    column = at - (text.rfind("\n", 0, at) + 1) + 1
    if unsupported:
        return UnsupportedPromQL(f"unsupported PromQL: {message} (at {line}:{column})")
    return PromQLError(f"{line}:{column}: parse error: {message}")


# --- the parser -------------------------------------------------------------------------------


def parse(text: str) -> Expr:
    """The tree of a PromQL query in the subset; raises `PromQLError` or `UnsupportedPromQL`."""
    parser = _Parser(text)
    if parser.peek().kind == "end":
        raise _error(text, 0, "no expression found in input")
    expr = parser.expression()
    token = parser.peek()
    if token.kind != "end":
        raise parser.unexpected(token)
    return expr


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.index = 0

    # token helpers

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def next(self) -> _Token:
        token = self.peek()
        self.index += 1
        return token

    def accept(self, text: str) -> bool:
        if self.peek().kind in ("op", "ident") and self.peek().text == text:
            self.index += 1
            return True
        return False

    def expect(self, text: str, context: str) -> _Token:
        token = self.next()
        if token.kind not in ("op", "ident") or token.text != text:
            raise self.fail(token, f"unexpected {_describe(token)} in {context}, expected {text!r}")
        return token

    def fail(self, token: _Token, message: str) -> PromQLError:
        return _error(self.text, token.at, message)

    def unsupported(self, token: _Token, what: str) -> PromQLError:
        return _error(self.text, token.at, what, unsupported=True)

    def string(self, token: _Token) -> str:
        try:
            return _unquote(token.text)
        except ValueError as exc:
            raise self.fail(token, str(exc)) from None

    def unexpected(self, token: _Token) -> PromQLError:
        if token.kind == "op" and token.text == "@":
            return self.unsupported(token, "the @ modifier")
        if _is_binary_keyword(token) or (token.kind == "op" and token.text in _UNSUPPORTED_BINARY):
            return self.unsupported(token, f"the binary operator {token.text!r}")
        return self.fail(token, f"unexpected {_describe(token)}")

    # expressions, by precedence

    def expression(self, min_precedence: int = 1) -> Expr:
        lhs = self.unary()
        while True:
            token = self.peek()
            if token.kind == "op" and token.text in _BINARY_PRECEDENCE:
                precedence = _BINARY_PRECEDENCE[token.text]
            elif (token.kind == "op" and token.text in _UNSUPPORTED_BINARY) or _is_binary_keyword(token):
                raise self.unsupported(token, f"the binary operator {token.text!r}")
            else:
                return lhs
            if precedence < min_precedence:
                return lhs
            self.next()
            for keyword in ("bool", "on", "ignoring", "group_left", "group_right"):
                if self.peek().kind == "ident" and self.peek().text == keyword:
                    raise self.unsupported(self.peek(), f"the vector matching modifier {keyword!r}")
            rhs = self.expression(precedence + 1)
            lhs = self.binary(token, lhs, rhs)

    def binary(self, token: _Token, lhs: Expr, rhs: Expr) -> Expr:
        if "matrix" in (value_type(lhs), value_type(rhs)):
            raise self.fail(token, "binary expression must contain only scalar and instant vector types")
        return Binary(op=token.text, lhs=lhs, rhs=rhs)

    def unary(self) -> Expr:
        token = self.peek()
        if token.kind == "op" and token.text in ("-", "+"):
            self.next()
            operand = self.unary()
            if value_type(operand) == "matrix":
                raise self.fail(
                    token, "unary expression only allowed on expressions of type scalar or vector"
                )
            if token.text == "+":
                return operand
            if isinstance(operand, NumberLiteral):
                return NumberLiteral(value=-operand.value)
            return Unary(op="-", expr=operand)
        return self.postfix(self.primary())

    def postfix(self, expr: Expr) -> Expr:
        while True:
            token = self.peek()
            if token.kind == "op" and token.text == "[":
                expr = self.range(token, expr)
            elif token.kind == "ident" and token.text == "offset":
                expr = self.offset(token, expr)
            elif token.kind == "op" and token.text == "@":
                raise self.unsupported(token, "the @ modifier")
            else:
                return expr

    def range(self, token: _Token, expr: Expr) -> Expr:
        self.next()
        duration = self.duration("range")
        if self.peek().text.startswith(":"):  # `[5m:1m]` lexes `:1m` as a name
            raise self.unsupported(token, "subqueries")
        self.expect("]", "range")
        if not isinstance(expr, VectorSelector):
            raise self.fail(token, "ranges only allowed for vector selectors")
        if duration <= 0:
            raise self.fail(token, "a range must be positive")
        return MatrixSelector(vector=expr, range_ms=duration)

    def offset(self, token: _Token, expr: Expr) -> Expr:
        self.next()
        sign = -1 if self.accept("-") else 1
        duration = sign * self.duration("offset")
        if isinstance(expr, VectorSelector) and expr.offset_ms == 0:
            return VectorSelector(matchers=expr.matchers, offset_ms=duration)
        if isinstance(expr, MatrixSelector) and expr.vector.offset_ms == 0:
            vector = VectorSelector(matchers=expr.vector.matchers, offset_ms=duration)
            return MatrixSelector(vector=vector, range_ms=expr.range_ms)
        if isinstance(expr, VectorSelector | MatrixSelector):
            raise self.fail(token, "offset may not be set multiple times")
        raise self.fail(
            token, "offset modifier must be preceded by an instant vector selector or range vector selector"
        )

    def duration(self, context: str) -> int:
        token = self.next()
        if token.kind != "duration":
            raise self.fail(
                token, f"unexpected {_describe(token)} in {context}, expected a duration (5m, 1h30m)"
            )
        duration = parse_duration_ms(token.text)
        assert duration is not None
        return duration

    def primary(self) -> Expr:
        token = self.next()
        if token.kind == "number":
            return NumberLiteral(value=_number(token.text))
        if token.kind == "string":
            raise self.unsupported(token, "string literals")
        if token.kind == "op" and token.text == "(":
            expr = self.expression()
            self.expect(")", "parenthesised expression")
            return expr
        if token.kind == "op" and token.text == "{":
            return self.selector(token, None)
        if token.kind == "ident":
            return self.identifier(token)
        if token.kind == "duration":
            raise self.fail(token, f"unexpected duration {token.text!r}")
        raise self.unexpected(token)

    def identifier(self, token: _Token) -> Expr:
        name = token.text
        if name in AGGREGATIONS:
            return self.aggregate(token)
        if name in _OTHER_AGGREGATIONS:
            raise self.unsupported(token, f"the aggregation {name}()")
        following = self.peek()
        if following.kind == "op" and following.text == "(":
            if name in FUNCTIONS:
                return self.call(token)
            if name in _OTHER_FUNCTIONS:
                raise self.unsupported(token, f"the function {name}()")
            raise self.fail(token, f"unknown function {name}()")
        if name.lower() in ("inf", "nan"):
            return NumberLiteral(value=math.inf if name.lower() == "inf" else math.nan)
        if name in ("by", "without", "offset", "bool", "on", "ignoring", "group_left", "group_right"):
            raise self.fail(token, f"unexpected keyword {name!r}")
        if _is_binary_keyword(token):
            raise self.unexpected(token)
        if following.kind == "op" and following.text == "{":
            self.next()
            return self.selector(token, name)
        return VectorSelector(matchers=(Matcher(name="__name__", op="=", value=name),))

    def selector(self, start: _Token, name: str | None) -> VectorSelector:
        matchers = [Matcher(name="__name__", op="=", value=name)] if name is not None else []
        while not self.accept("}"):
            token = self.next()
            following = self.peek()
            if token.kind == "string" and following.kind == "op" and following.text in (",", "}"):
                if any(m.name == "__name__" for m in matchers):
                    raise self.fail(token, "metric name must not be set twice")
                matchers.append(Matcher(name="__name__", op="=", value=self.string(token)))
            elif token.kind in ("ident", "string"):
                label = token.text if token.kind == "ident" else self.string(token)
                matchers.append(self.matcher(label))
            else:
                raise self.fail(token, f"unexpected {_describe(token)} in label matching, expected label")
            if not self.accept(","):
                self.expect("}", "label matching")
                break
        if sum(m.name == "__name__" for m in matchers) > 1 and name is not None:
            raise self.fail(start, "metric name must not be set twice")
        if not any(not m.matches("") for m in matchers):
            raise self.fail(start, "vector selector must contain at least one non-empty matcher")
        return VectorSelector(matchers=tuple(matchers))

    def matcher(self, label: str) -> Matcher:
        token = self.next()
        if token.kind != "op" or token.text not in ("=", "!=", "=~", "!~"):
            raise self.fail(
                token, f"unexpected {_describe(token)} in label matching, expected one of =, !=, =~, !~"
            )
        value_token = self.next()
        if value_token.kind != "string":
            raise self.fail(
                value_token, f"unexpected {_describe(value_token)} in label matching, expected string"
            )
        value = self.string(value_token)
        op: MatchOp = token.text  # type: ignore[assignment]  # checked above
        regex = None
        if op in ("=~", "!~"):
            try:
                regex = re.compile(f"(?:{value})", re.DOTALL)
            except re.error as exc:
                raise self.fail(value_token, f"invalid regular expression {value!r}: {exc}") from None
        return Matcher(name=label, op=op, value=value, regex=regex)

    def aggregate(self, token: _Token) -> Aggregate:
        grouping: tuple[str, ...] | None = None
        without = False
        if self.peek().kind == "ident" and self.peek().text in ("by", "without"):
            without = self.next().text == "without"
            grouping = self.labels()
        self.expect("(", f"aggregation {token.text}")
        args = self.arguments()
        if self.peek().kind == "ident" and self.peek().text in ("by", "without"):
            clause = self.next()
            if grouping is not None:
                raise self.fail(clause, "aggregation must only contain one grouping clause")
            without = clause.text == "without"
            grouping = self.labels()
        if len(args) != 1:
            raise self.fail(
                token,
                f"wrong number of arguments for aggregate expression provided, expected 1, got {len(args)}",
            )
        if value_type(args[0]) != "vector":
            got = _type_name(value_type(args[0]))
            raise self.fail(token, f"expected type instant vector in aggregation expression, got {got}")
        return Aggregate(op=token.text, expr=args[0], grouping=grouping or (), without=without)

    def labels(self) -> tuple[str, ...]:
        self.expect("(", "grouping labels")
        names: list[str] = []
        while not self.accept(")"):
            token = self.next()
            if token.kind == "ident" and re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", token.text):
                names.append(token.text)
            elif token.kind == "string":
                names.append(self.string(token))
            else:
                raise self.fail(token, f"unexpected {_describe(token)} in grouping opts, expected label")
            if not self.accept(","):
                self.expect(")", "grouping opts")
                break
        return tuple(names)

    def arguments(self) -> list[Expr]:
        args: list[Expr] = []
        while not self.accept(")"):
            args.append(self.expression())
            if not self.accept(","):
                self.expect(")", "argument list")
                break
        return args

    def call(self, token: _Token) -> Call:
        self.next()  # (
        args = tuple(self.arguments())
        expected: tuple[ValueType, ...] = (
            ("scalar", "vector") if token.text == "histogram_quantile" else ("matrix",)
        )
        if len(args) != len(expected):
            raise self.fail(
                token,
                f"expected {len(expected)} argument(s) in call to {token.text!r}, got {len(args)}",
            )
        for arg, wanted in zip(args, expected, strict=True):
            if value_type(arg) != wanted:
                raise self.fail(
                    token,
                    f"expected type {_type_name(wanted)} in call to function {token.text!r},"
                    f" got {_type_name(value_type(arg))}",
                )
        return Call(function=token.text, args=args)


def _is_binary_keyword(token: _Token) -> bool:
    return token.kind == "ident" and token.text in ("and", "or", "unless", "atan2")


def _number(text: str) -> float:
    return float(int(text, 16)) if text[:2].lower() == "0x" else float(text)


def _type_name(kind: ValueType) -> str:
    return {"scalar": "scalar", "vector": "instant vector", "matrix": "range vector"}[kind]


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "end of input"
    if token.kind == "ident":
        return f"identifier {token.text!r}"
    return f"{token.kind} {token.text!r}" if token.kind != "op" else repr(token.text)
