"""Ingest benchmark: sustained OTLP throughput of `mallard serve`, loaded from separate client processes.

    .venv/bin/python benchmarks/ingest.py [--workers 1,2] [--seconds 20] [--clients 4]
        [--signal traces|metrics|logs|all] [--transport grpc|http|grpc,http] [--overload]

For each (signal, transport, workers) it starts `mallard serve` on a fresh temporary store (default
settings: WAL fsync before every ack), starts `--clients` processes that each hold a pool of distinct,
pre-serialized OTLP requests of 512 items (fresh random ids per request, so nothing repeats) and send
them with `--inflight` calls in flight as fast as acks allow. After `--warmup` seconds it measures a
steady window of `--seconds`: items acknowledged, server CPU (the whole process tree, from
/proc/<pid>/stat) and client CPU. Then the clients stop, the benchmark waits until every acked row is
in Parquet, stops the server with SIGTERM (a clean drain) and counts the rows and bytes in the store.

`--overload` adds a run with many clients against a tiny `--max-queue-bytes`: the server must refuse
(RESOURCE_EXHAUSTED / 429) rather than grow; its resident memory is sampled throughout.

The default run (traces, metrics and logs over gRPC, 1 and 2 workers) takes about 4 minutes on a
2-core machine; `--overload` adds under a minute. Server settings can be varied with `--server-env`
(e.g. `MALLARD_PURE_PYTHON=1` for the pure-Python span converter where the native one is built).
Results and how to read them: docs/performance.md. Needs only what mallard itself depends on.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import math
import multiprocessing
import os
import random
import re
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

from aligned import print_aligned  # benchmarks/aligned.py (a script's folder is on sys.path)

ITEMS_PER_REQUEST: Final = 512
READY: Final = re.compile(r"ready grpc=(?P<host>[^:\s]+):(?P<grpc>\d+) http=[^:\s]+:(?P<http>\d+)")
TABLE_OF: Final = {"traces": "spans", "metrics": "metrics", "logs": "logs"}
GRPC_METHOD: Final = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")

# ---------------------------------------------------------------------------------------------------
# Requests. A template is serialized once with placeholder ids (MARKER + key); each request of the pool
# is the template with fresh random bytes in every placeholder (the same key gets the same bytes, so
# parent/child and trace membership survive). Metric points carry no ids: their time is the hole.
# Beyond ids, requests built from one template repeat its content, so `--templates` (512) exceeds the
# requests of one 250k-row Parquet flush: no file holds the same values twice to flatter compression.
# ---------------------------------------------------------------------------------------------------
MARKER: Final = b"\xfe\xed\xfa\xce"
TIME_KEY: Final = 0xFFFFFFFF

SERVICES: Final = (
    "frontend", "checkout", "cart", "payment", "shipping", "email", "currency", "recommendation",
    "ad", "product-catalog", "quote", "fraud-detection", "accounting", "inventory", "auth", "search",
    "user-profile", "notification", "llm-gateway", "feature-store",
)  # fmt: skip
ROUTES: Final = (
    "/api/v1/orders/{order_id}", "/api/v1/orders", "/api/v1/cart/{user_id}/items", "/api/v1/products",
    "/api/v1/products/{product_id}", "/api/v1/checkout", "/api/v1/users/{user_id}", "/health",
    "/api/v1/recommendations", "/api/v1/search", "/v1/chat/completions", "/api/v1/payments/{id}/capture",
)  # fmt: skip
CHILD_SPANS: Final = (
    ("SELECT orders", 3),
    ("SELECT products", 3),
    ("INSERT order_items", 3),
    ("redis GET", 3),
    ("GET", 3),
    ("POST", 3),
    ("render_template", 1),
    ("validate_request", 1),
    ("orders.created publish", 4),
    ("chat gpt-4o-mini", 3),
)  # (name, span kind)
USER_AGENTS: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
    "Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 "
    "Safari/605.1.15",
    "python-requests/2.32.3",
)


def _path(rng: random.Random, route: str) -> str:
    path = re.sub(r"\{[a-z_]+\}", lambda _: str(rng.randint(1_000, 9_999_999)), route)
    return path + rng.choice(("", "?expand=items", "?page=2&limit=50", "?currency=EUR"))


def _placeholder(key: int, size: int) -> bytes:
    return (MARKER + key.to_bytes(4, "little")).ljust(size, b"\0")


class _Ids:
    """Hands out placeholder ids and remembers each key's length."""

    def __init__(self) -> None:
        self.lengths: dict[int, int] = {}

    def new(self, size: int) -> bytes:
        key = len(self.lengths)
        self.lengths[key] = size
        return _placeholder(key, size)


def _kv(target: Any, key: str, value: object) -> None:
    kv = target.add()
    kv.key = key
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    elif isinstance(value, float):
        kv.value.double_value = value
    else:
        kv.value.string_value = str(value)


def _resource(resource: Any, service: str, rng: random.Random) -> None:
    for key, value in (
        ("service.name", service),
        ("service.namespace", "shop"),
        ("service.version", f"2.{rng.randint(0, 40)}.{rng.randint(0, 9)}"),
        ("service.instance.id", f"{rng.getrandbits(128):032x}"),
        ("host.name", f"ip-10-0-{rng.randint(0, 255)}-{rng.randint(0, 255)}.ec2.internal"),
        ("deployment.environment.name", "production"),
        ("telemetry.sdk.name", "opentelemetry"),
        ("telemetry.sdk.language", "python"),
        ("telemetry.sdk.version", "1.45.2"),
        ("process.pid", rng.randint(100, 60000)),
    ):
        _kv(resource.attributes, key, value)


def build_traces(rng: random.Random, service: str, now_ns: int, ids: _Ids) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request: Any = ExportTraceServiceRequest()  # upb message; Any keeps mypy off its enum NewTypes
    resource_spans = request.resource_spans.add()
    _resource(resource_spans.resource, service, rng)
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name, scope_spans.scope.version = "opentelemetry.instrumentation.flask", "0.66b2"
    made = 0
    while made < ITEMS_PER_REQUEST:
        trace_id = ids.new(16)
        route, method = rng.choice(ROUTES), rng.choice(("GET", "GET", "GET", "POST", "PUT", "DELETE"))
        error = rng.random() < 0.03
        spans: list[tuple[bytes, int, int]] = []  # span id, start, end
        for position in range(min(ITEMS_PER_REQUEST - made, rng.randint(1, 12))):
            span = scope_spans.spans.add()
            span_id = ids.new(8)
            span.trace_id, span.span_id, span.flags = trace_id, span_id, 0x301
            if position == 0:
                duration = int(rng.lognormvariate(math.log(25e6), 1.0))
                start = now_ns - rng.randint(0, 5_000_000_000) - duration
                span.name, span.kind = f"{method} {route}", 2
            else:
                parent_id, parent_start, parent_end = rng.choice(spans)
                start = parent_start + int(rng.random() * 0.5 * (parent_end - parent_start))
                duration = min(parent_end - start, int(rng.lognormvariate(math.log(3e6), 1.2)))
                span.parent_span_id = parent_id
                span.name, span.kind = rng.choice(CHILD_SPANS)
            span.start_time_unix_nano, span.end_time_unix_nano = start, start + duration
            spans.append((span_id, start, start + duration))
            status = rng.choice((500, 503)) if error and position == 0 else rng.choice((200, 200, 201, 404))
            for key, value in (
                ("http.request.method", method),
                ("http.route", route),
                ("http.response.status_code", status),
                ("url.scheme", "https"),
                ("url.full", f"https://{service}.shop.example.com{_path(rng, route)}"),
                ("server.address", f"{service}.shop.svc.cluster.local"),
                ("server.port", 8080),
                ("user_agent.original", rng.choice(USER_AGENTS)),
                ("network.protocol.version", rng.choice(("1.1", "2"))),
                ("client.address", f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"),
                ("app.cache_hit", rng.random() < 0.7),
            ):
                _kv(span.attributes, key, value)
            for offset, name, key, value in (
                (0.1, "request.validated", "request.body.size", rng.randint(0, 20_000)),
                (0.9, "response.sent", "response.body.size", rng.randint(100, 200_000)),
            ):
                event = span.events.add()
                event.time_unix_nano, event.name = start + int(offset * duration), name
                _kv(event.attributes, key, value)
            if error and position == 0:
                span.status.code, span.status.message = 2, "upstream request failed: deadline exceeded"
        made += len(spans)
    return bytes(request.SerializeToString())


# name, unit, kind (histogram | counter | updown | gauge), int-valued, attribute keys and values
_METRICS: Final[tuple[tuple[str, str, str, bool], ...]] = (
    ("http.server.request.duration", "s", "histogram", False),
    ("http.client.request.duration", "s", "histogram", False),
    ("db.client.operation.duration", "s", "histogram", False),
    ("rpc.server.duration", "ms", "histogram", False),
    ("gen_ai.client.token.usage", "{token}", "histogram", False),
    ("http.server.active_requests", "{request}", "updown", True),
    ("db.client.connection.count", "{connection}", "updown", True),
    ("process.cpu.time", "s", "counter", False),
    ("app.orders.placed", "{order}", "counter", True),
    ("app.cache.requests", "{request}", "counter", True),
    ("messaging.client.sent.messages", "{message}", "counter", True),
    ("process.network.io", "By", "counter", True),
    ("process.memory.usage", "By", "gauge", True),
    ("system.cpu.utilization", "1", "gauge", False),
    ("process.open_file_descriptor.count", "{fd}", "gauge", True),
    ("app.queue.depth", "{item}", "gauge", True),
)
_BOUNDS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


def _point_attributes(rng: random.Random, name: str) -> list[tuple[str, object]]:
    if name.startswith("http"):
        return [
            ("http.request.method", rng.choice(("GET", "POST", "PUT", "DELETE"))),
            ("http.route", rng.choice(ROUTES)),
            ("http.response.status_code", rng.choice((200, 201, 404, 500))),
            ("url.scheme", "https"),
            ("network.protocol.version", rng.choice(("1.1", "2"))),
        ]
    return [
        ("db.system.name" if name.startswith("db") else "app.component", rng.choice(("postgresql", "redis"))),
        ("server.address", f"{rng.choice(SERVICES)}.shop.svc.cluster.local"),
        ("cpu.mode" if name.startswith(("process", "system")) else "app.tenant", f"t{rng.randint(0, 30)}"),
        ("app.region", rng.choice(("eu-west-1", "us-east-1", "ap-south-1"))),
        ("app.shard", rng.randint(0, 63)),
    ]


def build_metrics(rng: random.Random, service: str, now_ns: int, ids: _Ids) -> bytes:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    request: Any = ExportMetricsServiceRequest()  # upb message; Any keeps mypy off its enum NewTypes
    resource_metrics = request.resource_metrics.add()
    _resource(resource_metrics.resource, service, rng)
    scope_metrics = resource_metrics.scope_metrics.add()
    scope_metrics.scope.name, scope_metrics.scope.version = "opentelemetry.instrumentation.system", "0.66b2"
    ids.lengths[TIME_KEY] = 8
    point_time = int.from_bytes(_placeholder(TIME_KEY, 8), "little")  # filled per request
    start = now_ns - 3_600_000_000_000
    per_metric = ITEMS_PER_REQUEST // len(_METRICS)
    for name, unit, kind, as_int in _METRICS:
        metric = scope_metrics.metrics.add()
        metric.name, metric.unit, metric.description = name, unit, f"{name.replace('.', ' ')} ({unit})"
        for _ in range(per_metric):
            if kind == "histogram":
                metric.histogram.aggregation_temporality = 2
                point: Any = metric.histogram.data_points.add()
                counts = [rng.randint(0, 400) for _ in range(len(_BOUNDS) + 1)]
                point.count, point.sum = sum(counts), sum(counts) * rng.lognormvariate(-3, 1)
                point.bucket_counts.extend(counts)
                point.explicit_bounds.extend(_BOUNDS)
                point.min, point.max = rng.random() * 0.004, 5 + rng.random() * 10
            else:
                if kind == "gauge":
                    point = metric.gauge.data_points.add()
                else:
                    metric.sum.aggregation_temporality = 2
                    metric.sum.is_monotonic = kind == "counter"
                    point = metric.sum.data_points.add()
                    point.start_time_unix_nano = start
                if as_int:
                    point.as_int = int(rng.lognormvariate(8, 2))
                else:
                    point.as_double = rng.lognormvariate(2, 2)
            if kind == "histogram":
                point.start_time_unix_nano = start
            point.time_unix_nano = point_time
            for key, value in _point_attributes(rng, name):
                _kv(point.attributes, key, value)
    return bytes(request.SerializeToString())


_LOG_LINES: Final = (
    "{method} {route} {status} in {ms:.1f} ms",
    "order {n} placed by user u-{m} total={ms:.2f} EUR",
    "retrying call to payment provider attempt={k} after timeout of {ms:.0f} ms",
    "cache miss for key product:{n}; loading from database",
    "user u-{m} authenticated via oauth2 (scopes: read write)",
    "slow query took {ms:.1f} ms: SELECT * FROM orders WHERE user_id = $1 ORDER BY created_at DESC",
    "published event orders.created id={n} partition={k}",
)
_SEVERITIES: Final = ((9, "INFO", 0.7), (13, "WARN", 0.15), (17, "ERROR", 0.05), (5, "DEBUG", 0.1))


def build_logs(rng: random.Random, service: str, now_ns: int, ids: _Ids) -> bytes:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request: Any = ExportLogsServiceRequest()  # upb message; Any keeps mypy off its enum NewTypes
    resource_logs = request.resource_logs.add()
    _resource(resource_logs.resource, service, rng)
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = f"{service.replace('-', '_')}.handlers"
    trace_id, span_id = ids.new(16), ids.new(8)
    for i in range(ITEMS_PER_REQUEST):
        if i % 4 == 0:  # a few records per span, a few spans per trace
            span_id = ids.new(8)
            trace_id = ids.new(16) if rng.random() < 0.3 else trace_id
        record = scope_logs.log_records.add()
        record.time_unix_nano = now_ns - rng.randint(0, 5_000_000_000)
        record.observed_time_unix_nano = record.time_unix_nano + rng.randint(10_000, 2_000_000)
        number, text = rng.choices([(n, t) for n, t, _ in _SEVERITIES], [w for *_, w in _SEVERITIES])[0]
        record.severity_number, record.severity_text = number, text
        record.body.string_value = rng.choice(_LOG_LINES).format(
            method=rng.choice(("GET", "POST")), route=rng.choice(ROUTES), status=rng.choice((200, 404, 500)),
            ms=rng.lognormvariate(3, 1), n=rng.randint(10_000, 999_999), m=rng.randint(1, 99_999),
            k=rng.randint(1, 5),
        )  # fmt: skip
        record.trace_id, record.span_id, record.flags = trace_id, span_id, 1
        for key, value in (
            ("code.function.name", rng.choice(("handle_order", "get_cart", "charge", "search", "login"))),
            ("code.file.path", f"/app/{service.replace('-', '_')}/handlers.py"),
            ("code.line.number", rng.randint(20, 900)),
            ("thread.name", f"worker-{rng.randint(0, 15)}"),
            ("http.route", rng.choice(ROUTES)),
        ):
            _kv(record.attributes, key, value)
    return bytes(request.SerializeToString())


BUILDERS: Final[dict[str, Callable[[random.Random, str, int, _Ids], bytes]]] = {
    "traces": build_traces,
    "metrics": build_metrics,
    "logs": build_logs,
}


class Template:
    """A serialized request cut at its placeholders; `fill()` makes a request with fresh ids."""

    def __init__(self, payload: bytes, lengths: dict[int, int]) -> None:
        self.pieces: list[bytes] = []
        self.holes: list[tuple[int, int]] = []  # key, length
        start = position = 0
        while (position := payload.find(MARKER, position)) >= 0:
            key = int.from_bytes(payload[position + 4 : position + 8], "little")
            size = lengths.get(key)
            if size is None or payload[position : position + size] != _placeholder(key, size):
                position += 1  # the marker bytes happened to occur in a value
                continue
            self.pieces.append(payload[start:position])
            self.holes.append((key, size))
            start = position = position + size
        self.pieces.append(payload[start:])
        self.lengths = lengths

    def fill(self, time_ns: int) -> bytes:
        noise = os.urandom(sum(self.lengths.values()))
        values: dict[int, bytes] = {}
        offset = 0
        for key, size in self.lengths.items():
            values[key] = noise[offset : offset + size]
            offset += size
        values[TIME_KEY] = struct.pack("<Q", time_ns)
        parts = [self.pieces[0]]
        for (key, _), piece in zip(self.holes, self.pieces[1:], strict=True):
            parts.append(values[key])
            parts.append(piece)
        return b"".join(parts)


def build_templates(signal_name: str, client: int, count: int) -> list[Template]:
    rng = random.Random(1_000 * client + 7)
    now_ns = time.time_ns()
    templates = []
    for i in range(count):
        ids = _Ids()
        service = SERVICES[(client * count + i) % len(SERVICES)]
        templates.append(Template(BUILDERS[signal_name](rng, service, now_ns, ids), ids.lengths))
    return templates


# ---------------------------------------------------------------------------------------------------
# Client processes
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class ClientPlan:
    index: int
    signal: str
    transport: str
    inflight: int
    templates: int
    pool: int
    retry_sleep_s: float


@dataclass(slots=True, kw_only=True)
class ClientReport:
    ack_times: list[float] = field(default_factory=list)
    ack_items: list[int] = field(default_factory=list)
    refusals: int = 0
    errors: list[str] = field(default_factory=list)
    topped_up: int = 0
    cpu_window_s: float = 0.0
    request_bytes: int = 0


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _grpc_sender(plan: ClientPlan, host: str, port: int) -> Callable[[bytes], tuple[str, int]]:
    import grpc

    channel = grpc.insecure_channel(f"{host}:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
    call = channel.unary_unary(GRPC_METHOD[plan.signal])
    retry = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)

    def send(payload: bytes) -> tuple[str, int]:
        try:
            answer = call(payload, timeout=120)
        except grpc.RpcError as exc:
            return ("refused" if exc.code() in retry else f"error {exc.code()}: {exc.details()}"), 0
        return "ok", _rejected(plan.signal, answer)

    return send


def _http_sender(plan: ClientPlan, host: str, port: int) -> Callable[[bytes], tuple[str, int]]:
    connection = http.client.HTTPConnection(host, port, timeout=120)
    path = f"/v1/{plan.signal}"
    headers = {"Content-Type": "application/x-protobuf"}

    def send(payload: bytes) -> tuple[str, int]:
        connection.request("POST", path, body=payload, headers=headers)
        answer = connection.getresponse()
        body = answer.read()
        if answer.status == 200:
            return "ok", _rejected(plan.signal, body)
        return ("refused" if answer.status in (429, 503) else f"error HTTP {answer.status}"), 0

    return send


def _rejected(signal_name: str, answer: bytes) -> int:
    if not answer:
        return 0
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    kinds: dict[str, Any] = {
        "traces": (ExportTraceServiceResponse, "rejected_spans"),
        "metrics": (ExportMetricsServiceResponse, "rejected_data_points"),
        "logs": (ExportLogsServiceResponse, "rejected_log_records"),
    }
    message, name = kinds[signal_name]
    return int(getattr(message.FromString(answer).partial_success, name))


def client_main(plan: ClientPlan, conn: Connection) -> None:
    """Builds the pool, reports ready, then sends from `plan.inflight` threads until told times."""
    templates = build_templates(plan.signal, plan.index, plan.templates)
    base_ns = time.time_ns()
    counter = itertools.count()

    def make(n: int) -> bytes:  # unique time per (client, request) for metric points
        return templates[n % len(templates)].fill(base_ns + (n * 64 + plan.index) * 1_000)

    pool = [make(n) for n in range(plan.pool)]
    report = ClientReport(request_bytes=sum(len(p) for p in pool[:20]) // min(20, len(pool)))
    conn.send("ready")
    _, host, port, t_go, t_w0, t_w1 = conn.recv()
    lock = threading.Lock()

    def sender() -> None:
        send = (_grpc_sender if plan.transport == "grpc" else _http_sender)(plan, host, port)
        times: list[float] = []
        items: list[int] = []
        refusals = topped = 0
        errors: list[str] = []
        time.sleep(max(0.0, t_go - time.perf_counter()))
        while time.perf_counter() < t_w1:
            n = next(counter)
            if n < len(pool):
                payload = pool[n]
                pool[n] = b""  # sent once; let it go
            else:
                payload, topped = make(n), topped + 1
            while True:
                try:
                    outcome, rejected = send(payload)
                except OSError as exc:
                    outcome, rejected = f"error {exc}", 0
                if outcome != "refused" or time.perf_counter() >= t_w1:
                    break
                refusals += 1
                time.sleep(plan.retry_sleep_s)
            if outcome == "ok":
                times.append(time.perf_counter())
                items.append(ITEMS_PER_REQUEST - rejected)
            elif outcome != "refused":
                errors.append(outcome)
                time.sleep(0.1)
        with lock:
            report.ack_times.extend(times)
            report.ack_items.extend(items)
            report.refusals += refusals
            report.topped_up += topped
            report.errors.extend(errors[:5])

    threads = [threading.Thread(target=sender) for _ in range(plan.inflight)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, t_w0 - time.perf_counter()))
    cpu0 = _cpu_self()
    time.sleep(max(0.0, t_w1 - time.perf_counter()))
    report.cpu_window_s = _cpu_self() - cpu0
    for thread in threads:
        thread.join()
    conn.send(asdict(report))


# ---------------------------------------------------------------------------------------------------
# The server and its process tree
# ---------------------------------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_cpu_s(root: int) -> float:
    """utime + stime (+ those of reaped children) of every process in the tree, in seconds."""
    ticks = 0
    for pid in tree_pids(root):
        if (fields := _stat_fields(pid)) is not None:
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (user, nice, system, irq, softirq) since boot."""
    user, nice, system, _idle, _iowait, irq, softirq = (
        int(v) for v in Path("/proc/stat").read_text().split()[1:8]
    )
    return (user + nice + system + irq + softirq) / CLK_TCK


def tree_memory_kib(root: int) -> tuple[int, int]:
    """(sum of VmRSS, sum of VmHWM) over the tree, in KiB."""
    rss = hwm = 0
    for pid in tree_pids(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm += int(line.split()[1])
    return rss, hwm


class Server:
    """`mallard serve` on free ports; `lines` collects its output."""

    def __init__(self, data: Path, workers: int, extra: list[str], env: dict[str, str]) -> None:
        command = [
            sys.executable, "-m", "mallard.app.cli", "serve", "--data", str(data),
            "--grpc-port", "0", "--http-port", "0", "--workers", str(workers), *extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env}
        )
        self.lines: list[str] = []
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if match := READY.search(line):
                self.host, self.grpc, self.http = match["host"], int(match["grpc"]), int(match["http"])
                threading.Thread(target=self._drain, daemon=True).start()
                return
        raise RuntimeError("mallard serve did not start:\n" + "".join(self.lines))

    def _drain(self) -> None:
        assert self.process.stdout is not None
        self.lines.extend(self.process.stdout)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=300)


class MemorySampler(threading.Thread):
    """Samples the server tree's memory every `period` seconds until stopped."""

    def __init__(self, root: int, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.root, self.period = root, period
        self.samples: list[tuple[float, int]] = []  # (perf_counter, sum of VmRSS KiB)
        self.peak_hwm_kib = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            rss, hwm = tree_memory_kib(self.root)
            if rss:
                self.samples.append((time.perf_counter(), rss))
                self.peak_hwm_kib = max(self.peak_hwm_kib, hwm)
            self.done.wait(self.period)


def store_rows(data: Path, table: str, cache: dict[Path, int]) -> int:
    import pyarrow.parquet as pq

    for path in (data / "v1" / table).glob("date=*/hour=*/*.parquet"):
        if path not in cache:
            cache[path] = pq.read_metadata(path).num_rows
    return sum(cache.values())


def own_rows(paths: list[Path]) -> int:
    """Rows the collector wrote about itself (service `mallard` self-metrics), not benchmark load."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    return sum(
        int(pc.sum(pc.equal(pq.read_table(path, columns=["service_name"])[0], "mallard")).as_py() or 0)
        for path in paths
    )


def describe_code() -> str:
    """The commit measured (read-only git)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
        return done.stdout.strip()

    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"commit {git('rev-parse', '--short', 'HEAD')}{dirty}"


def span_converter(env: dict[str, str]) -> str:
    """Which span converter a server started with `env` uses: `native` (C, where built) or `python`."""
    probe = (
        "from mallard.collector.arrow import spans; "
        "print('native' if getattr(spans, '_native_convert', None) else 'python')"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env={**os.environ, **env}, check=False
    )
    return done.stdout.strip() or "unknown"


# ---------------------------------------------------------------------------------------------------
# One scenario
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    signal: str
    transport: str
    workers: int
    clients: int
    inflight: int
    warmup_s: float
    seconds: float
    pool_rate: float
    templates: int
    server_flags: tuple[str, ...] = ()
    server_env: tuple[tuple[str, str], ...] = ()
    retry_sleep_s: float = 0.05


def run_scenario(sc: Scenario) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    converter = span_converter(dict(sc.server_env)) if sc.signal == "traces" else "python"
    name = f"{sc.name} ({converter})" if sc.signal == "traces" else sc.name
    pool = math.ceil(sc.pool_rate * (sc.warmup_s + sc.seconds + 2) / sc.clients / ITEMS_PER_REQUEST)
    with tempfile.TemporaryDirectory(prefix="mallard-bench-") as tmp:
        data = Path(tmp) / "data"
        pipes, clients = [], []
        for index in range(sc.clients):
            ours, theirs = context.Pipe()
            plan = ClientPlan(
                index=index, signal=sc.signal, transport=sc.transport, inflight=sc.inflight,
                templates=math.ceil(sc.templates / sc.clients), pool=pool, retry_sleep_s=sc.retry_sleep_s,
            )  # fmt: skip
            process = context.Process(target=client_main, args=(plan, theirs), name=f"bench-client-{index}")
            process.start()
            pipes.append(ours)
            clients.append(process)
        server = Server(data, sc.workers, list(sc.server_flags), dict(sc.server_env))
        root = server.process.pid
        sampler = MemorySampler(root)
        sampler.start()
        for pipe in pipes:
            if not pipe.poll(300) or pipe.recv() != "ready":
                raise RuntimeError("a client process did not build its pool")
        port = server.grpc if sc.transport == "grpc" else server.http
        # perf_counter is CLOCK_MONOTONIC on Linux: one clock for this and the client processes
        t_go = time.perf_counter() + 0.2
        t_w0, t_w1 = t_go + sc.warmup_s, t_go + sc.warmup_s + sc.seconds
        for pipe in pipes:
            pipe.send(("go", server.host, port, t_go, t_w0, t_w1))
        table, cache = TABLE_OF[sc.signal], dict[Path, int]()
        time.sleep(max(0.0, t_w0 - time.perf_counter()))
        cpu0, busy0, rows0 = tree_cpu_s(root), machine_busy_s(), store_rows(data, table, cache)
        time.sleep(max(0.0, t_w1 - time.perf_counter()))
        cpu1, busy1 = tree_cpu_s(root), machine_busy_s()
        reports = [ClientReport(**pipe.recv()) for pipe in pipes]
        for process in clients:
            process.join()
        acked = sum(sum(r.ack_items) for r in reports)
        last_ack = max((t for r in reports for t in r.ack_times), default=t_w1)
        deadline = time.perf_counter() + 120
        while (rows := store_rows(data, table, cache)) < acked and time.perf_counter() < deadline:
            time.sleep(0.05)
        t_done = time.perf_counter()
        code = server.stop()
        t_stopped = time.perf_counter()
        sampler.done.set()
        sampler.join()
        cache.clear()
        total_rows = store_rows(data, table, cache)
        self_rows = own_rows(list(cache))
        rows = total_rows - self_rows
        parquet_bytes = sum(p.stat().st_size for p in cache)
        by_writer: dict[str, int] = {}
        for path, n in cache.items():
            by_writer[path.name.split("-")[0]] = by_writer.get(path.name.split("-")[0], 0) + n
    in_window = sum(
        n for r in reports for t, n in zip(r.ack_times, r.ack_items, strict=True) if t_w0 <= t < t_w1
    )
    window_rss = [kib for t, kib in sampler.samples if t_w0 <= t < t_w1]
    half = len(window_rss) // 2
    return {
        "name": name, "converter": converter, "signal": sc.signal, "transport": sc.transport,
        "workers": sc.workers, "clients": sc.clients, "inflight": sc.inflight, "seconds": sc.seconds,
        "server_flags": list(sc.server_flags), "server_env": dict(sc.server_env),
        "acked_items": acked, "acked_per_s": in_window / sc.seconds,
        "committed_per_s": (rows - rows0) / (t_done - t_w0),
        "commit_lag_s": max(0.0, t_done - last_ack), "drain_s": t_stopped - t_done,
        "rows": rows, "missing_rows": max(0, acked - rows), "extra_rows": max(0, rows - acked),
        "by_writer": by_writer, "exit_code": code,
        "server_cpu_us_per_item": (cpu1 - cpu0) / max(in_window, 1) * 1e6,
        "server_cores": (cpu1 - cpu0) / sc.seconds,
        "client_cores": sum(r.cpu_window_s for r in reports) / sc.seconds,
        "other_cores": (busy1 - busy0 - (cpu1 - cpu0) - sum(r.cpu_window_s for r in reports)) / sc.seconds,
        "peak_hwm_mib": sampler.peak_hwm_kib / 1024,
        "peak_rss_mib": max((kib for _, kib in sampler.samples), default=0) / 1024,
        "rss_first_half_max_mib": max(window_rss[:half], default=0) / 1024,
        "rss_second_half_max_mib": max(window_rss[half:], default=0) / 1024,
        "parquet_bytes": parquet_bytes, "parquet_bytes_per_item": parquet_bytes / max(rows, 1),
        "otlp_bytes_per_item": sum(r.request_bytes for r in reports) / len(reports) / ITEMS_PER_REQUEST,
        "refusals": sum(r.refusals for r in reports), "topped_up": sum(r.topped_up for r in reports),
        "client_errors": [e for r in reports for e in r.errors][:5],
        "self_rows": self_rows,
        "server_log": [ln.strip() for ln in server.lines if " ERROR " in ln or " WARNING " in ln][:5],
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------
_COLUMNS: Final = (
    ("scenario", "{name}"), ("acked/s", "{acked_per_s:,.0f}"), ("committed/s", "{committed_per_s:,.0f}"),
    ("lag s", "{commit_lag_s:.1f}"), ("drain s", "{drain_s:.1f}"),
    ("srv µs/item", "{server_cpu_us_per_item:.1f}"), ("srv cores", "{server_cores:.2f}"),
    ("cli cores", "{client_cores:.2f}"), ("other cores", "{other_cores:.2f}"),
    ("peak RSS MiB", "{peak_hwm_mib:,.0f}"), ("OTLP B/item", "{otlp_bytes_per_item:.0f}"),
    ("Parquet B/item", "{parquet_bytes_per_item:.1f}"), ("rows", "{rows:,}"),
    ("lost", "{missing_rows}"), ("refused", "{refusals:,}"),
)  # fmt: skip


LEGEND: Final = """\
acked/s: items acknowledged per second in the steady window (after the warm-up).
committed/s: rows that reached Parquet from the window's start until every acked row was in Parquet,
  per second of that span. lag s: last ack -> every acked row in Parquet. drain s: SIGTERM -> exit.
srv µs/item: CPU of the server process tree (utime+stime) in the window / items acked in it.
srv, cli, other cores: CPU used in the window by the server tree, the client processes, and everything
  else on the machine (/proc/stat busy minus the two). peak RSS: sum of VmHWM over the server's processes.
Parquet B/item: bytes of *.parquet files / rows. lost: acked items missing from the store after the drain.
refused: RESOURCE_EXHAUSTED / UNAVAILABLE (gRPC) or 429 / 503 (HTTP) answers, each retried by the client."""


def print_table(results: list[dict[str, Any]]) -> None:
    print_aligned(
        [[head for head, _ in _COLUMNS]] + [[fmt.format(**r) for _, fmt in _COLUMNS] for r in results]
    )
    for r in results:
        notes = []
        if len(r["by_writer"]) > 1:
            notes.append(
                "rows by worker " + ", ".join(f"{k}={v:,}" for k, v in sorted(r["by_writer"].items()))
            )
        if r["name"].startswith("overload"):
            notes.append(
                f"RSS max first/second half of window {r['rss_first_half_max_mib']:.0f}/"
                f"{r['rss_second_half_max_mib']:.0f} MiB"
            )
        for key in ("topped_up", "extra_rows", "self_rows"):
            if r[key]:
                notes.append(f"{key}={r[key]}")
        if r["exit_code"]:
            notes.append(f"server exit code {r['exit_code']}")
        notes += [f"client error: {e}" for e in r["client_errors"][:2]]
        notes += [f"server: {e}" for e in r["server_log"][:2]]
        if notes:
            print(f"  {r['name']}: " + "; ".join(notes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--seconds", type=float, default=20, help="steady measuring window (default 20)")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before the window (3)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--inflight", type=int, default=4, help="calls in flight per client process (4)")
    parser.add_argument("--signal", default="all", help="traces, metrics, logs, all, or a comma list")
    parser.add_argument("--transport", default="grpc", help="grpc, http, or grpc,http (default grpc)")
    parser.add_argument("--pool-rate", type=float, default=60_000, help="items/s the request pools cover")
    parser.add_argument(
        "--templates",
        type=int,
        default=512,
        help="distinct requests built (ids aside) across the clients; 512 covers a 250k-row flush (512)",
    )
    parser.add_argument("--overload", action="store_true", help="add the overload scenario")
    parser.add_argument("--overload-only", action="store_true", help="run only the overload scenario")
    parser.add_argument("--overload-clients", type=int, default=8, help="client processes when overloaded")
    parser.add_argument("--overload-inflight", type=int, default=8, help="calls in flight per client")
    parser.add_argument("--max-queue-bytes", default="32MiB", help="server queue limit when overloaded")
    parser.add_argument("--server-env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    signals = ["traces", "metrics", "logs"] if args.signal == "all" else args.signal.split(",")
    env = tuple(tuple(item.split("=", 1)) for item in args.server_env)
    common = {
        "warmup_s": args.warmup,
        "seconds": args.seconds,
        "pool_rate": args.pool_rate,
        "templates": args.templates,
        "server_env": env,
    }
    scenarios = [] if args.overload_only else [
        Scenario(
            name=f"{s} {t} w{w}", signal=s, transport=t, workers=int(w), clients=args.clients,
            inflight=args.inflight, **common,
        )
        for s in signals for t in args.transport.split(",") for w in args.workers.split(",")
    ]  # fmt: skip
    if args.overload or args.overload_only:
        scenarios.append(
            Scenario(
                name=f"overload traces grpc w1 q={args.max_queue_bytes}", signal="traces", transport="grpc",
                workers=1, clients=args.overload_clients, inflight=args.overload_inflight,
                server_flags=("--max-queue-bytes", args.max_queue_bytes), **common,
            )
        )  # fmt: skip
    print(
        f"{len(scenarios)} scenario(s) on {os.cpu_count()} CPUs: "
        f"{args.warmup:g}s warm-up + {args.seconds:g}s window each; {describe_code()}"
    )
    results = []
    for scenario in scenarios:
        started = time.perf_counter()
        result = run_scenario(scenario)
        results.append(result)
        print(
            f"  {result['name']}: {result['acked_per_s']:,.0f} acked/s, {result['committed_per_s']:,.0f} "
            f"committed/s ({time.perf_counter() - started:.0f}s)",
            flush=True,
        )
    print()
    print_table(results)
    print()
    print(LEGEND)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["missing_rows"] == 0 and r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
