"""The PromQL subset's parser (`mallard.query.promql`): trees, types, and errors with positions."""

from __future__ import annotations

import math

import pytest

from mallard.query.promql import (
    Aggregate,
    Binary,
    Call,
    Matcher,
    MatrixSelector,
    NumberLiteral,
    PromQLError,
    Unary,
    UnsupportedPromQL,
    VectorSelector,
    parse,
    parse_duration_ms,
    value_type,
)


def name(value: str) -> Matcher:
    return Matcher(name="__name__", op="=", value=value)


def selector(metric: str, *matchers: Matcher, offset_ms: int = 0) -> VectorSelector:
    return VectorSelector(matchers=(name(metric), *matchers), offset_ms=offset_ms)


# --- what parses, and into what ---------------------------------------------------------------


def test_numbers() -> None:
    assert parse("1") == NumberLiteral(value=1.0)
    assert parse("2.5e3") == NumberLiteral(value=2500.0)
    assert parse(".5") == NumberLiteral(value=0.5)
    assert parse("0x1f") == NumberLiteral(value=31.0)
    assert parse("Inf") == NumberLiteral(value=math.inf)
    assert parse("-inf") == NumberLiteral(value=-math.inf)
    nan = parse("NaN")
    assert isinstance(nan, NumberLiteral) and math.isnan(nan.value)
    assert parse("-1") == NumberLiteral(value=-1.0)
    assert parse("+1") == NumberLiteral(value=1.0)


def test_selectors_and_matchers() -> None:
    assert parse("up") == selector("up")
    assert parse("http_requests:rate5m") == selector("http_requests:rate5m")
    parsed = parse("""x{a="1", b!='2', c=~"d.*", e!~`f|g`,}""")
    assert parsed == selector(
        "x",
        Matcher(name="a", op="=", value="1"),
        Matcher(name="b", op="!=", value="2"),
        Matcher(name="c", op="=~", value="d.*"),
        Matcher(name="e", op="!~", value="f|g"),
    )
    assert parse('{__name__="http.server.duration"}') == VectorSelector(
        matchers=(name("http.server.duration"),)
    )
    # Prometheus 3's quoted names: a lone string is the metric name; a quoted label name
    assert parse('{"http.server.duration", "http.route"="/a"}') == VectorSelector(
        matchers=(name("http.server.duration"), Matcher(name="http.route", op="=", value="/a"))
    )
    assert parse(r'x{a="tab\there \"q\" \u00e9"}') == selector(
        "x", Matcher(name="a", op="=", value='tab\there "q" é')
    )


def test_regex_matchers_are_anchored() -> None:
    parsed = parse('x{a=~"b|c", d!~"e.*"}')
    assert isinstance(parsed, VectorSelector)
    matches, excludes = parsed.matchers[1], parsed.matchers[2]
    assert matches.matches("b") and matches.matches("c")
    assert not matches.matches("bc") and not matches.matches("ab")
    assert excludes.matches("") and excludes.matches("xe") and not excludes.matches("eel")
    dot = parse('x{a=~"a.b"}')
    assert isinstance(dot, VectorSelector) and dot.matchers[1].matches("a\nb")  # `.` matches a newline


def test_ranges_and_offsets() -> None:
    assert parse("x[5m]") == MatrixSelector(vector=selector("x"), range_ms=300_000)
    assert parse("x[1h30m]") == MatrixSelector(vector=selector("x"), range_ms=5_400_000)
    assert parse("x offset 1m") == selector("x", offset_ms=60_000)
    assert parse("x[5m] offset 1d") == MatrixSelector(
        vector=selector("x", offset_ms=86_400_000), range_ms=300_000
    )
    assert parse("x offset -30s") == selector("x", offset_ms=-30_000)
    assert parse_duration_ms("250ms") == 250
    assert parse_duration_ms("1w2d") == 777_600_000
    assert parse_duration_ms("5") is None and parse_duration_ms("m") is None


def test_functions() -> None:
    rate = parse("rate(x[5m])")
    assert rate == Call(function="rate", args=(MatrixSelector(vector=selector("x"), range_ms=300_000),))
    assert parse("increase(x{a='b'}[1m])") == Call(
        function="increase",
        args=(MatrixSelector(vector=selector("x", Matcher(name="a", op="=", value="b")), range_ms=60_000),),
    )
    quantile = parse("histogram_quantile(0.9, rate(x_bucket[5m]))")
    assert isinstance(quantile, Call) and quantile.args[0] == NumberLiteral(value=0.9)


def test_aggregations_prefix_and_suffix_grouping() -> None:
    inner = Call(function="rate", args=(MatrixSelector(vector=selector("x"), range_ms=300_000),))
    expected = Aggregate(op="sum", expr=inner, grouping=("le", "job"))
    assert parse("sum by (le, job) (rate(x[5m]))") == expected
    assert parse("sum(rate(x[5m])) by (le, job)") == expected
    assert parse("avg without (instance) (x)") == Aggregate(
        op="avg", expr=selector("x"), grouping=("instance",), without=True
    )
    assert parse("count(x)") == Aggregate(op="count", expr=selector("x"))
    assert parse("max by () (x)") == Aggregate(op="max", expr=selector("x"))
    assert parse("min(x) without (a,)") == Aggregate(
        op="min", expr=selector("x"), grouping=("a",), without=True
    )


def test_arithmetic_precedence_and_parentheses() -> None:
    one, two, three = (NumberLiteral(value=float(n)) for n in (1, 2, 3))
    assert parse("1 + 2 * 3") == Binary(op="+", lhs=one, rhs=Binary(op="*", lhs=two, rhs=three))
    assert parse("(1 + 2) * 3") == Binary(op="*", lhs=Binary(op="+", lhs=one, rhs=two), rhs=three)
    assert parse("1 - 2 - 3") == Binary(op="-", lhs=Binary(op="-", lhs=one, rhs=two), rhs=three)
    assert parse("-x / 2") == Binary(op="/", lhs=Unary(op="-", expr=selector("x")), rhs=two)
    assert parse("1+1") == Binary(op="+", lhs=one, rhs=one)  # Grafana's health check
    assert parse("# a comment\n x # another\n") == selector("x")


def test_value_types() -> None:
    assert value_type(parse("1 + 2")) == "scalar"
    assert value_type(parse("x * 2")) == "vector"
    assert value_type(parse("-(1)")) == "scalar"
    assert value_type(parse("x[5m]")) == "matrix"
    assert value_type(parse("histogram_quantile(0.5, x)")) == "vector"
    assert value_type(parse("sum(x)")) == "vector"


# --- errors: position, message, and what is outside the subset --------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "1:1: parse error: no expression found in input"),
        ("sum(", "1:5: parse error: unexpected end of input"),
        ("x{a=}", "1:5: parse error: unexpected '}' in label matching, expected string"),
        ("x{a~'b'}", "1:4: parse error: unexpected character '~'"),
        ("1 +", "1:4: parse error: unexpected end of input"),
        ("x y", "1:3: parse error: unexpected identifier 'y'"),
        (
            "rate(x)",
            "1:1: parse error: expected type range vector in call to function 'rate', got instant vector",
        ),
        ("rate(x[5m], x[5m])", "1:1: parse error: expected 1 argument(s) in call to 'rate', got 2"),
        (
            "sum(x[5m])",
            "1:1: parse error: expected type instant vector in aggregation expression, got range vector",
        ),
        ("sum(1)", "1:1: parse error: expected type instant vector in aggregation expression, got scalar"),
        ("sum by (a) (x) by (b)", "1:16: parse error: aggregation must only contain one grouping clause"),
        ("histogram_quantile(x, y)", "1:1: parse error: expected type scalar in call to function"),
        (
            "x[5m] + 1",
            "1:7: parse error: binary expression must contain only scalar and instant vector types",
        ),
        ("-x[5m]", "1:1: parse error: unary expression only allowed on expressions of type scalar or vector"),
        ("rate(x[5m])[1m]", "1:12: parse error: ranges only allowed for vector selectors"),
        ("x[5]", "1:3: parse error: unexpected number '5' in range, expected a duration"),
        ("x offset 1m offset 2m", "1:13: parse error: offset may not be set multiple times"),
        ("sum(x) offset 1m", "1:8: parse error: offset modifier must be preceded by"),
        ('{a=""}', "1:1: parse error: vector selector must contain at least one non-empty matcher"),
        ('{a=~".*"}', "1:1: parse error: vector selector must contain at least one non-empty matcher"),
        ('x{__name__="y"}', "1:1: parse error: metric name must not be set twice"),
        ('x{a=~"("}', "1:6: parse error: invalid regular expression '('"),
        (r'x{a="\q"}', "1:5: parse error: unknown escape sequence \\q"),
        ("foo(x)", "1:1: parse error: unknown function foo()"),
        ("sum\n  (x\n  y)", "3:3: parse error: unexpected identifier 'y' in argument list, expected ')'"),
    ],
)
def test_parse_errors_name_the_position(query: str, message: str) -> None:
    with pytest.raises(PromQLError) as raised:
        parse(query)
    assert str(raised.value).startswith(message)
    assert not isinstance(raised.value, UnsupportedPromQL)


@pytest.mark.parametrize(
    ("query", "construct"),
    [
        ("irate(x[5m])", "the function irate() (at 1:1)"),
        ("sum(avg_over_time(x[5m]))", "the function avg_over_time() (at 1:5)"),
        ("label_replace(x, 'a', 'b', 'c', 'd')", "the function label_replace()"),
        ("topk(3, x)", "the aggregation topk() (at 1:1)"),
        ("quantile(0.9, x)", "the aggregation quantile()"),
        ("x > 1", "the binary operator '>' (at 1:3)"),
        ("x == bool 1", "the binary operator '=='"),
        ("x % 2", "the binary operator '%'"),
        ("2 ^ 3", "the binary operator '^'"),
        ("x and y", "the binary operator 'and' (at 1:3)"),
        ("x or y", "the binary operator 'or'"),
        ("x unless y", "the binary operator 'unless'"),
        ("x + on(a) y", "the vector matching modifier 'on' (at 1:5)"),
        ("x / ignoring(a) y", "the vector matching modifier 'ignoring'"),
        ("x @ 1700000000", "the @ modifier (at 1:3)"),
        ("x[5m:1m]", "subqueries (at 1:2)"),
        ('"text"', "string literals (at 1:1)"),
    ],
)
def test_unsupported_promql_names_the_construct(query: str, construct: str) -> None:
    with pytest.raises(UnsupportedPromQL) as raised:
        parse(query)
    assert str(raised.value).startswith(f"unsupported PromQL: {construct}")
