"""The product's promise: `kill -9` under load loses nothing acknowledged and duplicates nothing.

Client threads send pre-serialized OTLP requests (spans, logs and metric points, each item with a
unique id) over gRPC and HTTP and note which items got an OK answer. The collector is killed at
seeded random moments, restarted on the same store with other flush settings, and finally stopped
with SIGTERM. Then every acknowledged item must be in Parquet exactly once, no item twice at all,
and the WAL must be down to its one active segment, holding nothing a restart would write again.
With `--workers 2`, a kill -9 of the supervisor must also end its workers.

`MALLARD_CRASH_SEED=<n>` replays the test with other kill moments and flush settings.
"""

from __future__ import annotations

import http.client
import os
import random
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from signal import SIGKILL
from typing import Any, Final

import grpc
import pyarrow as pa
import pytest
from harness import MallardServer, query, start_server
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from mallard.collector.arrow import Limits
from mallard.collector.recovery import recover
from mallard.collector.wal import WriteAheadLog, read_segment
from mallard.storage.layout import list_part_files, tmp_dir, wal_dir
from mallard.storage.schema import TABLES

SEED: Final = int(os.environ.get("MALLARD_CRASH_SEED", "20240617"))  # another seed: another run
KILLS: Final = 5
ITEMS_PER_REQUEST: Final = 8
SEGMENT_BYTES: Final = 64 << 10  # small segments: they roll and get released during the test
SIGNALS: Final = ("traces", "logs", "metrics")
TABLE_OF: Final = {"traces": "spans", "logs": "logs", "metrics": "metrics"}
ID_SQL: Final = {  # the collector's own metrics may be in the store too: read only what the test sent
    "traces": "select span_id as id from spans where service_name = 'crash-test'",
    "logs": "select body as id from logs where service_name = 'crash-test'",
    "metrics": "select attributes['item.id'] as id from metrics where metric_name = 'crash.gauge'",
}
GRPC_METHODS: Final = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
HTTP_PATHS: Final = {"traces": "/v1/traces", "metrics": "/v1/metrics", "logs": "/v1/logs"}
REJECTED: Final[dict[str, tuple[Any, str]]] = {
    "traces": (ExportTraceServiceResponse, "rejected_spans"),
    "metrics": (ExportMetricsServiceResponse, "rejected_data_points"),
    "logs": (ExportLogsServiceResponse, "rejected_log_records"),
}
REPLAYED = re.compile(r"replayed \d+ WAL records of w0: (\d+) rows written, (\d+) already committed")
TIMEOUT_S: Final = 20.0
HOUR_NS: Final = 3_600_000_000_000


# -- requests: item ids are unique across the whole test; items lie in this hour and the one before --
def _resource() -> Resource:
    resource = Resource()
    attribute = resource.attributes.add()
    attribute.key, attribute.value.string_value = "service.name", "crash-test"
    return resource


def _time_ns(item: int) -> int:
    return time.time_ns() - (item % 2) * HOUR_NS


def spans_request(items: Sequence[int]) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.CopyFrom(_resource())
    spans = resource_spans.scope_spans.add().spans
    for item in items:
        span = spans.add()
        span.trace_id, span.span_id, span.name = item.to_bytes(16, "big"), item.to_bytes(8, "big"), "load"
        span.start_time_unix_nano = _time_ns(item)
        span.end_time_unix_nano = span.start_time_unix_nano + 1_000
    return request.SerializeToString()


def logs_request(items: Sequence[int]) -> bytes:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.CopyFrom(_resource())
    records = resource_logs.scope_logs.add().log_records
    for item in items:
        record = records.add()
        record.time_unix_nano, record.body.string_value = _time_ns(item), str(item)
    return request.SerializeToString()


def metrics_request(items: Sequence[int]) -> bytes:
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.CopyFrom(_resource())
    metric = resource_metrics.scope_metrics.add().metrics.add()
    metric.name = "crash.gauge"
    for item in items:
        point = metric.gauge.data_points.add()
        point.time_unix_nano, point.as_int = _time_ns(item), item
        attribute = point.attributes.add()
        attribute.key, attribute.value.string_value = "item.id", str(item)
    return request.SerializeToString()


BUILDERS: Final[dict[str, Callable[[Sequence[int]], bytes]]] = {
    "traces": spans_request,
    "logs": logs_request,
    "metrics": metrics_request,
}


def stored_ids(data: Path, signal: str) -> Counter[int]:
    values = query(data, ID_SQL[signal]).column("id").to_pylist()
    return Counter(int(v, 16) if signal == "traces" else int(v) for v in values)


# -- the load -----------------------------------------------------------------------------------------
class Target:
    """The collector the clients talk to now (None while it is killed and restarted), and its number."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._server: MallardServer | None = None
        self._generation = 0
        self.closed = False

    def set(self, server: MallardServer | None) -> int:
        with self._cond:
            self._server = server
            if server is not None:
                self._generation += 1
            self._cond.notify_all()
            return self._generation

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait(self) -> tuple[int, MallardServer | None]:
        with self._cond:
            self._cond.wait_for(lambda: self._server is not None or self.closed, 1.0)
            return self._generation, None if self.closed else self._server


class Ledger:
    """What was sent, what was acknowledged, per signal, and acks per transport of each generation."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.sent: dict[str, set[int]] = defaultdict(set)
        self.acked: dict[str, set[int]] = defaultdict(set)
        self.outcomes: Counter[str] = Counter()
        self.acks_by: Counter[tuple[int, str]] = Counter()  # (generation, transport)

    def send(self, signal: str, items: Sequence[int]) -> None:
        with self._cond:
            self.sent[signal].update(items)

    def answer(
        self, signal: str, items: Sequence[int], transport: str, generation: int, outcome: str
    ) -> None:
        with self._cond:
            self.outcomes[f"{transport} {outcome}"] += 1
            if outcome == "ok":
                self.acked[signal].update(items)
                self.acks_by[(generation, transport)] += 1
            self._cond.notify_all()

    def wait_for_acks(self, generation: int, count: int) -> None:
        """Until both transports have `count` acks from the collector of `generation`."""
        with self._cond:
            reached = self._cond.wait_for(
                lambda: all(self.acks_by[(generation, t)] >= count for t in ("grpc", "http")), TIMEOUT_S
            )
        assert reached, f"no load reached collector #{generation}: {dict(self.outcomes)}"


class Client(threading.Thread):
    """Sends requests one after the other over one transport, rotating the signals."""

    def __init__(self, number: int, transport: str, target: Target, ledger: Ledger) -> None:
        super().__init__(name=f"crash-client-{number}", daemon=True)
        self.number, self.transport, self.target, self.ledger = number, transport, target, ledger
        self.error: BaseException | None = None
        self._server: MallardServer | None = None
        self._channel: grpc.Channel | None = None
        self._http: http.client.HTTPConnection | None = None

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc
        finally:
            self._disconnect()

    def _loop(self) -> None:
        sequence = 0
        while True:
            generation, server = self.target.wait()
            if self.target.closed:
                return
            if server is None:
                continue
            if server is not self._server:
                self._disconnect()
                self._server = server
            signal = SIGNALS[sequence % len(SIGNALS)]
            base = (self.number * 10_000_000 + sequence) * 100
            items = [base + k + 1 for k in range(ITEMS_PER_REQUEST)]
            sequence += 1
            body = BUILDERS[signal](items)
            self.ledger.send(signal, items)
            if self.transport == "grpc":
                outcome = self._grpc(server, signal, body)
            else:
                outcome = self._post(server, signal, body)
            self.ledger.answer(signal, items, self.transport, generation, outcome)

    def _grpc(self, server: MallardServer, signal: str, body: bytes) -> str:
        if self._channel is None:
            self._channel = grpc.insecure_channel(server.grpc_endpoint)
        try:
            answer = self._channel.unary_unary(GRPC_METHODS[signal])(body, timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            return str(exc.code().name)  # type: ignore[attr-defined]
        return _judge(signal, answer)

    def _post(self, server: MallardServer, signal: str, body: bytes) -> str:
        if self._http is None:
            self._http = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=TIMEOUT_S)
        try:
            self._http.request(
                "POST", HTTP_PATHS[signal], body=body, headers={"Content-Type": "application/x-protobuf"}
            )
            response = self._http.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._http.close()
            self._http = None
            return type(exc).__name__
        return _judge(signal, answer) if response.status == 200 else f"http {response.status}"

    def _disconnect(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._http is not None:
            self._http.close()
            self._http = None


def _judge(signal: str, answer: bytes) -> str:
    response_type, field = REJECTED[signal]
    rejected = getattr(response_type.FromString(answer).partial_success, field)
    return "ok" if rejected == 0 else f"partial {rejected}"


def flush_settings(rng: random.Random) -> list[str]:
    """Flush early or late, so that kills land both before and after Parquet commits."""
    return [
        "--flush-interval",
        rng.choice(["0.05", "0.2", "1"]),
        "--flush-rows",
        rng.choice(["40", "400", "250000"]),
        "--wal-fsync",
        rng.choice(["always", "interval", "never"]),
        "--wal-segment-bytes",
        str(SEGMENT_BYTES),
    ]


# -- the tests ----------------------------------------------------------------------------------------
@pytest.mark.crash
@pytest.mark.timeout(180)
def test_kill_9_under_load_loses_nothing_acknowledged_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    data = tmp_path / "data"
    target, ledger = Target(), Ledger()
    clients = [Client(n, ("grpc", "http")[n % 2], target, ledger) for n in range(4)]
    servers: list[MallardServer] = []
    try:
        servers.append(start_server(data, *flush_settings(rng)))
        generation = target.set(servers[-1])
        for client in clients:
            client.start()
        for _ in range(KILLS):
            ledger.wait_for_acks(generation, 2)
            time.sleep(rng.uniform(0.05, 1.5))  # the kill moment: the test's random input
            target.set(None)
            servers[-1].kill()
            servers.append(start_server(data, *flush_settings(rng)))
            generation = target.set(servers[-1])
        ledger.wait_for_acks(generation, 20)
        target.set(None)
        assert servers[-1].stop() == 0, "".join(servers[-1].output[-30:])
    finally:
        stop_all(target, clients, servers)

    assert_exactly_once(data, ledger, clients)
    # the kills landed both on rows not yet in Parquet and on WAL records already committed
    replays = [m for server in servers[1:] for line in server.output for m in REPLAYED.finditer(line)]
    assert sum(int(m[1]) for m in replays) > 0, "no kill found acknowledged rows waiting for Parquet"
    assert sum(int(m[2]) for m in replays) > 0, "no kill found committed rows still in the WAL"
    assert_wal_truncated(data, "w0", busy=True)
    assert not list(tmp_dir(data).iterdir()), "a clean stop leaves no temporary file"
    assert not (data / "wal" / "quarantine").exists()


@pytest.mark.crash
@pytest.mark.timeout(180)
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes in /proc")
def test_kill_9_of_the_supervisor_ends_its_workers_and_loses_nothing(tmp_path: Path) -> None:
    """With `--workers 2` a kill -9 hits only the supervisor: its workers (and the HTTP API) must not
    serve on as orphans (on the ports and the WALs of the next collector); they drain and exit, and
    nothing is lost."""
    rng = random.Random(SEED + 1)
    data = tmp_path / "data"
    target, ledger = Target(), Ledger()
    clients = [Client(n, ("grpc", "http")[n % 2], target, ledger) for n in range(4)]
    servers: list[MallardServer] = []
    workers: list[int] = []
    try:
        servers.append(
            start_server(data, "--workers", "2", "--compact-interval", "3600", *flush_settings(rng))
        )
        generation = target.set(servers[-1])
        for client in clients:
            client.start()
        for _ in range(2):
            ledger.wait_for_acks(generation, 2)
            workers = worker_pids(servers[-1].process.pid)
            assert len(workers) == 4, workers  # two collector workers, the HTTP API, store maintenance
            time.sleep(rng.uniform(0.05, 1.0))
            target.set(None)
            servers[-1].kill()
            deadline = time.monotonic() + TIMEOUT_S
            while any(map(running, workers)):
                assert time.monotonic() < deadline, "workers still serve after their supervisor was killed"
                time.sleep(0.05)
            servers.append(
                start_server(data, "--workers", "2", "--compact-interval", "3600", *flush_settings(rng))
            )
            generation = target.set(servers[-1])
        ledger.wait_for_acks(generation, 20)
        target.set(None)
        assert servers[-1].stop() == 0, "".join(servers[-1].output[-30:])
    finally:
        stop_all(target, clients, servers)
        for pid in filter(running, workers):  # orphans of a failed run
            os.kill(pid, SIGKILL)

    assert_exactly_once(data, ledger, clients)
    for writer in ("w0", "w1"):
        assert_wal_truncated(data, writer, busy=False)


# -- helpers of the tests -----------------------------------------------------------------------------
def stop_all(target: Target, clients: Sequence[Client], servers: Sequence[MallardServer]) -> None:
    target.close()
    for client in clients:
        client.join(TIMEOUT_S)
    for server in servers:
        if server.process.poll() is None:
            server.kill()


def assert_exactly_once(data: Path, ledger: Ledger, clients: Sequence[Client]) -> None:
    """Every acknowledged item is stored once; no item is stored twice, acknowledged or not."""
    for client in clients:
        assert client.error is None, f"{client.name} failed: {client.error!r}"
    summary = f"seed {SEED}, outcomes: {dict(ledger.outcomes)}"
    for signal in SIGNALS:
        found = stored_ids(data, signal)
        duplicates = sorted(item for item, count in found.items() if count > 1)
        lost = sorted(ledger.acked[signal] - set(found))
        strangers = sorted(set(found) - ledger.sent[signal])
        assert not duplicates, (
            f"{signal}: {len(duplicates)} items stored twice, e.g. {duplicates[:5]}; {summary}"
        )
        assert not lost, f"{signal}: {len(lost)} acknowledged items lost, e.g. {lost[:5]}; {summary}"
        assert not strangers, f"{signal}: items never sent: {strangers[:5]}"
        assert len(ledger.acked[signal]) >= 100, summary


class _NoWrites:
    def write(self, table: str, batches: Sequence[pa.RecordBatch], **_: object) -> list[Path]:
        raise AssertionError(f"a restart after a clean stop would write {table} again")


def assert_wal_truncated(data: Path, writer: str, *, busy: bool) -> None:
    """After a clean stop every closed segment is gone; the active one holds only committed records.

    `busy`: the writer took enough load to roll segments (with several workers, SO_REUSEPORT may
    send every connection to one of them).
    """
    directory = wal_dir(data, writer)
    segments = sorted(directory.glob("*.wal"))
    assert len(segments) == 1, f"closed segments left behind: {[p.name for p in segments]}"
    (segment,) = segments
    records, end, clean = read_segment(segment)
    assert clean and end == segment.stat().st_size
    assert end <= SEGMENT_BYTES + 64 * 1024
    if busy:
        assert int(segment.stem) > 1, "the WAL never rolled a segment: the test sent too little"
        assert records, "the active segment holds the records of the last run"
    parts = [part for table in TABLES for part in list_part_files(data, table) if part.writer == writer]
    if records:
        assert records[-1].lsn <= max(part.last_lsn for part in parts)
    report = recover(
        WriteAheadLog(directory, on_commit=lambda *_: None),
        root=data,
        writer=writer,
        sink=_NoWrites(),
        limits=Limits(),
        quarantine=data / "wal" / "quarantine",
    )
    assert (report.records, report.rows, report.quarantined) == (len(records), 0, 0)


def worker_pids(supervisor: int) -> list[int]:
    """The multiprocessing children a `mallard serve --workers N` process has started (the N workers,
    the HTTP API and store maintenance)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == supervisor and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may never be reaped in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
