"""`instrument_flask(app)`: server spans and the request-duration histogram of a Flask app, following the
stable OpenTelemetry HTTP semantic conventions.

Built on `opentelemetry-instrumentation-flask` (install with `pip install "mallard[flask]"`); this module
imports it, and Flask, only when `instrument_flask` is called.

What an instrumented app emits, per request (see `docs/semconv.md` for the full list):

- a SERVER span named `{method} {route}` (`GET /items/<int:item_id>`), or only `{method}` when no route
  matched (a 404 or 405: the URL path is not a bounded name), with `http.request.method`, `http.route`,
  `http.response.status_code`, `url.path`, `url.query`, `url.scheme`, `server.address`, `server.port`,
  `client.address`, `user_agent.original`, `network.protocol.version`; a W3C `traceparent` header on the
  request makes it a child of the caller's span;
- a 5xx response: span status ERROR and `error.type` = the status code (`"500"`); an exception raised in
  a view adds an `exception` event (`exception.type`, `exception.message`, `exception.stacktrace`) and
  the status description `"<type>: <message>"`. 4xx answers leave the server span's status UNSET;
- the histogram `http.server.request.duration` (unit `s`) with `http.request.method`, `http.route`,
  `http.response.status_code`, `url.scheme`, `network.protocol.version`, and `error.type` on a 5xx;
  and the up-down counter `http.server.active_requests` (`{request}`).

Semantic conventions. The instrumentation speaks the old HTTP conventions (`http.server.duration` in
ms, `http.method`, `http.status_code`, `http.target`) unless `OTEL_SEMCONV_STABILITY_OPT_IN` names
`http` (stable only) or `http/dup` (both) when it first reads that variable; it reads it once per
process (the first `instrument()`/`instrument_app()` of any OpenTelemetry instrumentation) and keeps the
answer. So `instrument_flask` adds `http` to the variable when it names neither (a `http/dup` the user
set is kept) before it instruments the app; other instrumentations set up later in the process (urllib,
requests) then follow the stable conventions too. If the conventions were fixed earlier in the process
without `http`, the app gets the old ones and a `RuntimeWarning` says so: set the variable in the
environment instead.

Providers. By default the spans and metrics go through OpenTelemetry's global providers, the ones
`mallard.instrumentation.configure()` sets; calling `configure()` after `instrument_flask()` works too
(the global providers are proxies until set). `telemetry=` (what `configure()` returned) or
`tracer_provider=`/`meter_provider=` choose other providers. Without any configured provider the
instrumentation costs little and exports nothing.

Under `opentelemetry-instrument` (the zero-code path) every `Flask()` is already instrumented;
`instrument_flask` then leaves the app as it is and returns False.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from mallard.instrumentation.setup import Telemetry

if TYPE_CHECKING:
    from flask import Flask
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

logger = logging.getLogger(__name__)

INSTALL_HINT: Final = 'needs Flask and its OpenTelemetry instrumentation: pip install "mallard[flask]"'
SEMCONV_OPT_IN: Final = "OTEL_SEMCONV_STABILITY_OPT_IN"
# the keyword arguments handed on to FlaskInstrumentor.instrument_app
PASSED_ON: Final = frozenset({"response_hook", "excluded_urls", "enable_commenter", "commenter_options"})

RequestHook = Callable[["Span", Mapping[str, Any]], None]


def instrument_flask(
    app: Flask,
    *,
    telemetry: Telemetry | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    request_hook: RequestHook | None = None,
    **kw: Any,
) -> bool:
    """Instruments `app` (see the module docstring for what it emits). Returns False when the app was
    already instrumented (by an earlier call or `opentelemetry-instrument`), True otherwise.

    `kw` goes on to `FlaskInstrumentor.instrument_app`: `excluded_urls` (comma-separated regular
    expressions searched in the full URL, e.g. `"healthz,/static/.*"`; default
    `OTEL_PYTHON_FLASK_EXCLUDED_URLS`, else `OTEL_PYTHON_EXCLUDED_URLS`), `response_hook(span, status,
    headers)`, `enable_commenter`, `commenter_options`. `request_hook(span, environ)` runs when the
    server span starts. An unknown keyword raises TypeError."""
    unknown = sorted(set(kw) - PASSED_ON)
    if unknown:
        raise TypeError(
            f"instrument_flask() got unknown keyword arguments {unknown}; it passes on only "
            f"{sorted(PASSED_ON)} (and takes telemetry, tracer_provider, meter_provider, request_hook)"
        )
    try:
        import flask
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
    except ImportError as error:
        raise ImportError(f"mallard.instrumentation.flask {INSTALL_HINT} ({error})") from error
    if getattr(app, "_is_instrumented_by_opentelemetry", False):
        logger.debug("Flask app %s is already instrumented; left as it is", app.name)
        return False
    if telemetry is not None:
        tracer_provider = tracer_provider or telemetry.tracer_provider
        meter_provider = meter_provider or telemetry.meter_provider
    opt_in_stable_http()

    def on_request(span: Span, environ: Mapping[str, Any]) -> None:
        if flask.request.url_rule is None:  # no route matched: name the span by its method only
            span.update_name(_method_name(environ))
        if request_hook is not None:
            request_hook(span, environ)

    instrument_app: Any = FlaskInstrumentor.instrument_app  # untyped upstream
    instrument_app(
        app, request_hook=on_request, tracer_provider=tracer_provider, meter_provider=meter_provider, **kw
    )
    if not stable_http_in_use():
        warnings.warn(
            "the OpenTelemetry HTTP semantic conventions of this process were fixed to the old ones "
            f"before instrument_flask() ran; set {SEMCONV_OPT_IN}=http in the environment to get "
            "http.server.request.duration",
            RuntimeWarning,
            stacklevel=2,
        )
    return True


def opt_in_stable_http() -> None:
    """Adds `http` to `OTEL_SEMCONV_STABILITY_OPT_IN` unless it names `http` or `http/dup` already."""
    chosen = [item.strip() for item in os.environ.get(SEMCONV_OPT_IN, "").split(",") if item.strip()]
    if "http" not in chosen and "http/dup" not in chosen:
        os.environ[SEMCONV_OPT_IN] = ",".join([*chosen, "http"])


def stable_http_in_use() -> bool:
    """Whether the process's OpenTelemetry instrumentations emit the stable HTTP conventions (alone or
    next to the old ones). This reads the instrumentation package's private state, pinned with it."""
    from opentelemetry.instrumentation import _semconv

    stability: Any = _semconv._OpenTelemetrySemanticConventionStability  # untyped upstream
    stability._initialize()
    mode = stability._get_opentelemetry_stability_opt_in_mode(_semconv._OpenTelemetryStabilitySignalType.HTTP)
    return bool(_semconv._report_new(mode))


def _method_name(environ: Mapping[str, Any]) -> str:
    """The span name of a request no route matched: its method, or `HTTP` for a non-standard one."""
    from opentelemetry.util.http import sanitize_method

    method = sanitize_method(str(environ.get("REQUEST_METHOD", "")).strip())
    return "HTTP" if method in ("_OTHER", "") else str(method)
