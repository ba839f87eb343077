"""`instrument_flask()` and the zero-code `opentelemetry-instrument` path against a real `mallard serve`:
a real Flask app served by werkzeug on port 0, real HTTP requests, the rows checked in the store.

OpenTelemetry's providers (and its semantic-convention choice) are process-global, so each case runs
the app in a fresh interpreter.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import MallardServer, env_without_otel, query, run_python, wait_for_rows

# The app of every case: three routes that answer, one that raises, one that calls another over HTTP.
APP = r"""
import json, threading, urllib.request
from flask import Flask, request as current
from werkzeug.serving import make_server

app = Flask("shop")

@app.get("/items/<int:item_id>")
def item(item_id):
    return {"id": item_id}

@app.get("/boom")
def boom():
    raise ValueError("kaput")

@app.get("/healthz")
def healthz():
    return "ok"

@app.get("/chain")
def chain():
    from opentelemetry import propagate, trace
    headers = {}
    with trace.get_tracer("shop").start_as_current_span("GET", kind=trace.SpanKind.CLIENT):
        propagate.inject(headers)  # traceparent: the downstream server span becomes our child
        url = current.host_url + "items/7"
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as answer:
            return {"downstream": json.loads(answer.read())}

def serve():
    server = make_server("127.0.0.1", 0, app, threaded=True)  # threaded: /chain calls its own server
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
"""

CHILD = r"""
import json, os, sys, urllib.error, urllib.request, warnings
from mallard.instrumentation import configure, shutdown
from mallard.instrumentation.flask import instrument_flask

args = json.loads(sys.argv[1])
if args.get("fixed_before"):  # another instrumentation reads the semconv choice first
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
    OpenTelemetryMiddleware(lambda environ, start_response: [])
exec(APP)

def tag(span, environ):
    span.set_attribute("shop.tenant", environ.get("HTTP_X_TENANT", "none"))

def instrument(telemetry=None):  # None: through the global providers
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = instrument_flask(app, telemetry=telemetry, excluded_urls="healthz", request_hook=tag)
        second = instrument_flask(app)
    return [first, second], [str(w.message) for w in caught]

if args["order"] == "instrument-first":
    done, caught = instrument()
telemetry = configure(service_name=args["service"], endpoint=args["endpoint"], metric_interval_s=600)
if args["order"] == "configure-first":
    done, caught = instrument(telemetry)

server = serve()
base = f"http://127.0.0.1:{server.port}"
statuses = {}
for path in ["/items/1", "/items/2", "/items/3", "/boom", "/missing", "/healthz", "/chain"]:
    ask = urllib.request.Request(base + path + "?q=1", headers={"X-Tenant": "acme"})
    try:
        with urllib.request.urlopen(ask, timeout=30) as answer:
            statuses[path] = answer.status
    except urllib.error.HTTPError as error:
        statuses[path] = error.code
server.shutdown()
shutdown()
print(json.dumps({"instrumented": done, "warnings": caught, "statuses": statuses,
                  "semconv": os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN")}))
"""

ZERO_CODE = r"""
import sys
exec(APP)
server = serve()
print(server.port, flush=True)
sys.stdin.readline()  # the test's requests are done
server.shutdown()
"""

STATUSES = {
    "/items/1": 200,
    "/items/2": 200,
    "/items/3": 200,
    "/boom": 500,
    "/missing": 404,
    "/healthz": 200,
    "/chain": 200,
}


def _child(args: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    script = CHILD.replace("exec(APP)", f"exec({APP!r})")
    out: dict[str, Any] = json.loads(run_python(script, json.dumps(args), env=env).splitlines()[-1])
    assert out["statuses"] == STATUSES
    return out


def _server_spans(server: MallardServer, service: str, expected: int) -> list[dict[str, Any]]:
    return wait_for_rows(
        server.data,
        "SELECT trace_id, span_id, parent_span_id, name, kind, http_method, http_route, http_status_code,"
        " status_code, status_message, attributes, events, scope_name FROM spans"
        f" WHERE service_name = '{service}' AND kind = 'SERVER' ORDER BY start_time",
        expected,
    ).to_pylist()


def _check_spans(server: MallardServer, service: str, *, ours: bool) -> dict[str, Any]:
    """The server spans of one run of the requests in STATUSES (`/healthz` excluded): stable
    conventions, routes, status, the error, the downstream call's trace; when `ours`
    (`instrument_flask`, not the zero-code path) the request hook's `shop.tenant` and the 404 span named
    by its method only. Answers the `/boom` span."""
    spans = _server_spans(server, service, 7)
    by_path = {dict(span["attributes"])["url.path"]: span for span in spans}
    assert sorted(by_path) == sorted(["/items/7", *(p for p in STATUSES if p != "/healthz")])
    assert len(spans) == len(by_path)
    for path, span in by_path.items():
        attributes = dict(span["attributes"])
        assert span["kind"] == "SERVER" and span["http_method"] == "GET"
        assert span["scope_name"] == "opentelemetry.instrumentation.flask"
        assert span["http_status_code"] == STATUSES.get(path, 200)
        assert attributes["http.request.method"] == "GET"
        assert attributes["http.response.status_code"] == str(STATUSES.get(path, 200))
        assert attributes["url.scheme"] == "http"
        assert attributes.get("url.query") == (None if path == "/items/7" else "q=1")
        assert "http.method" not in attributes and "http.target" not in attributes  # no old conventions
        if ours:
            assert attributes["shop.tenant"] == ("none" if path == "/items/7" else "acme")
    item = by_path["/items/2"]
    assert (item["name"], item["http_route"], item["status_code"]) == (
        "GET /items/<int:item_id>",
        "/items/<int:item_id>",
        "UNSET",
    )
    assert item["events"] == [] and "error.type" not in dict(item["attributes"])
    missing = by_path["/missing"]  # no route: instrument_flask names the span by its method only
    assert missing["name"] == ("GET" if ours else "GET /missing")
    assert (missing["http_route"], missing["status_code"]) == (None, "UNSET")
    boom = by_path["/boom"]
    assert (boom["name"], boom["http_route"], boom["status_code"]) == ("GET /boom", "/boom", "ERROR")
    assert boom["status_message"] == "ValueError: kaput"
    assert dict(boom["attributes"])["error.type"] == "500"
    (event,) = boom["events"]
    event_attributes = dict(event["attributes"])
    assert event["name"] == "exception"
    assert (event_attributes["exception.type"], event_attributes["exception.message"]) == (
        "ValueError",
        "kaput",
    )
    assert "in boom\n" in event_attributes["exception.stacktrace"]
    # /chain -> CLIENT span -> /items/7, one trace
    chain, downstream = by_path["/chain"], by_path["/items/7"]
    client = wait_for_rows(
        server.data,
        "SELECT trace_id, span_id, parent_span_id FROM spans"
        f" WHERE service_name = '{service}' AND kind = 'CLIENT'",
        1,
    ).to_pylist()
    assert client == [
        {
            "trace_id": chain["trace_id"],
            "span_id": downstream["parent_span_id"],
            "parent_span_id": chain["span_id"],
        }
    ]
    assert downstream["trace_id"] == chain["trace_id"] and downstream["name"] == "GET /items/<int:item_id>"
    assert [s["parent_span_id"] for s in spans if s is not downstream] == [""] * (len(spans) - 1)
    return boom


def _durations(server: MallardServer, service: str, name: str, expected: int) -> list[dict[str, Any]]:
    return wait_for_rows(
        server.data,
        "SELECT unit, metric_type, count, sum, explicit_bounds, attributes FROM metrics"
        f" WHERE service_name = '{service}' AND metric_name = '{name}'",
        expected,
    ).to_pylist()


def _check_duration_histogram(server: MallardServer, service: str) -> None:
    """One `http.server.request.duration` point per route and status, counting the requests
    (`/healthz` excluded)."""
    points = _durations(server, service, "http.server.request.duration", 4)
    counts = {}
    for point in points:
        attributes = dict(point["attributes"])
        assert (point["unit"], point["metric_type"]) == ("s", "histogram")
        assert point["explicit_bounds"] == [
            0.005,
            0.01,
            0.025,
            0.05,
            0.075,
            0.1,
            0.25,
            0.5,
            0.75,
            1,
            2.5,
            5,
            7.5,
            10,
        ]
        assert 0 < point["sum"] < 30 * point["count"]
        assert attributes.pop("http.request.method") == "GET"
        assert attributes.pop("url.scheme") == "http" and attributes.pop("network.protocol.version") == "1.1"
        key = (attributes.pop("http.route", None), attributes.pop("http.response.status_code"))
        assert attributes == ({"error.type": "500"} if key == ("/boom", "500") else {})
        counts[key] = point["count"]
    expected = {
        ("/items/<int:item_id>", "200"): 4,
        ("/boom", "500"): 1,
        (None, "404"): 1,
        ("/chain", "200"): 1,
    }
    assert counts == expected


@pytest.mark.parametrize("order", ["configure-first", "instrument-first"])
def test_server_spans_and_duration_histogram_follow_stable_http_conventions(
    server: MallardServer, order: str
) -> None:
    service = f"shop-{order}"
    out = _child({"order": order, "service": service, "endpoint": server.grpc_endpoint})
    assert out["instrumented"] == [True, False] and out["warnings"] == []
    assert out["semconv"] == "http"  # the opt-in instrument_flask made
    boom = _check_spans(server, service, ours=True)
    _check_duration_histogram(server, service)
    # Flask logs the view's exception; configure() sends it as a log of the /boom trace
    logs = wait_for_rows(
        server.data,
        "SELECT severity_text, body, attributes['exception.type'] AS type FROM logs"
        f" WHERE trace_id = '{boom['trace_id']}' AND span_id = '{boom['span_id']}'",
        1,
    ).to_pylist()
    assert logs == [{"severity_text": "ERROR", "body": "Exception on /boom [GET]", "type": "ValueError"}]
    old = _durations(server, service, "http.server.duration", 0)
    assert old == []


def test_conventions_fixed_earlier_give_a_warning_and_the_old_names(server: MallardServer) -> None:
    out = _child(
        {
            "order": "configure-first",
            "service": "late",
            "endpoint": server.grpc_endpoint,
            "fixed_before": True,
        }
    )
    (warning,) = out["warnings"]
    assert "fixed to the old ones" in warning and "OTEL_SEMCONV_STABILITY_OPT_IN=http" in warning
    points = _durations(server, "late", "http.server.duration", 4)
    assert {p["unit"] for p in points} == {"ms"} and sum(p["count"] for p in points) == 7
    assert _durations(server, "late", "http.server.request.duration", 0) == []


def test_http_dup_from_the_environment_is_kept(server: MallardServer) -> None:
    out = _child(
        {"order": "configure-first", "service": "dup", "endpoint": server.grpc_endpoint},
        env={"OTEL_SEMCONV_STABILITY_OPT_IN": "database,http/dup"},
    )
    assert out["semconv"] == "database,http/dup" and out["warnings"] == []
    new = _durations(server, "dup", "http.server.request.duration", 4)
    old = _durations(server, "dup", "http.server.duration", 4)
    assert sum(p["count"] for p in new) == sum(p["count"] for p in old) == 7
    assert {p["unit"] for p in new} == {"s"} and {p["unit"] for p in old} == {"ms"}


def test_import_without_flask_and_an_install_hint_on_use() -> None:
    script = (
        "import sys\n"
        "sys.modules['flask'] = None; sys.modules['opentelemetry.instrumentation.flask'] = None\n"
        "from mallard.instrumentation.flask import instrument_flask\n"
        "try:\n    instrument_flask(object())\nexcept ImportError as error:\n    print(error)\n"
        "try:\n    instrument_flask(object(), excluded=1)\nexcept TypeError as error:\n    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    hint, unknown = result.stdout.splitlines()
    assert 'pip install "mallard[flask]"' in hint
    assert "unknown keyword arguments ['excluded']" in unknown


def test_zero_code_opentelemetry_instrument(server: MallardServer, tmp_path: Path) -> None:
    """`opentelemetry-instrument python app.py` with only environment variables pointing at mallard."""
    script = tmp_path / "app.py"
    script.write_text(ZERO_CODE.replace("exec(APP)", APP))
    command = [str(Path(sys.executable).parent / "opentelemetry-instrument"), sys.executable, str(script)]
    env = env_without_otel(
        OTEL_SERVICE_NAME="zero-code",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{server.grpc_endpoint}",
        OTEL_SEMCONV_STABILITY_OPT_IN="http",
        OTEL_PYTHON_FLASK_EXCLUDED_URLS="healthz",
    )
    app = subprocess.Popen(
        command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert app.stdout is not None and app.stdin is not None
        port = int(app.stdout.readline())
        for path, status in STATUSES.items():
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}{path}?q=1", headers={"X-Tenant": "acme"}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    assert answer.status == status
            except urllib.error.HTTPError as error:
                assert error.code == status
        _, errors = app.communicate("done\n", timeout=60)  # exits: the SDK flushes at exit
    finally:
        app.kill()
    assert app.returncode == 0, errors
    _check_spans(server, "zero-code", ours=False)
    _check_duration_histogram(server, "zero-code")


def test_the_example_app(server: MallardServer) -> None:
    """`examples/flask_app.py` runs as documented and its `/chain` makes one trace of three spans."""
    example = Path(__file__).parents[2] / "examples" / "flask_app.py"
    command = [sys.executable, str(example), "--endpoint", server.grpc_endpoint, "--port", "0"]
    app = subprocess.Popen(
        command, env=env_without_otel(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert app.stdout is not None
        base = app.stdout.readline().split()[-1]
        assert base.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{base}/chain", timeout=30) as answer:
            assert json.loads(answer.read()) == {"downstream": {"id": 7, "name": "item 7"}}
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"{base}/boom", timeout=30)
        assert raised.value.code == 500
        app.send_signal(signal.SIGINT)  # Ctrl-C: shutdown() flushes
        _, errors = app.communicate(timeout=60)
    finally:
        app.kill()
    assert app.returncode == 0, errors
    spans = wait_for_rows(
        server.data,
        "SELECT name, kind, status_code, http_status_code FROM spans WHERE service_name = 'shop'"
        " ORDER BY start_time",
        4,
    ).to_pylist()
    assert [tuple(span.values()) for span in spans] == [
        ("GET /chain", "SERVER", "UNSET", 200),
        ("GET", "CLIENT", "UNSET", 200),
        ("GET /items/<int:item_id>", "SERVER", "UNSET", 200),
        ("GET /boom", "SERVER", "ERROR", 500),
    ]
    traces = query(server.data, "SELECT count(DISTINCT trace_id) FROM spans WHERE service_name = 'shop'")
    assert traces.column(0).to_pylist() == [2]
