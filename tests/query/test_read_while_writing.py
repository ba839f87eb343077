"""`mallard sql` and `Store` answer while the collector commits files: no errors, counts only grow."""

from __future__ import annotations

import threading
import urllib.request

from harness import MallardServer, run_cli
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from mallard.query import Store


def _send(server: MallardServer, batch: int) -> None:
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    for i in range(200):
        records.add(
            time_unix_nano=1_763_800_000_000_000_000 + batch * 1000 + i
        ).body.string_value = f"{batch}/{i}"
    urllib.request.urlopen(
        urllib.request.Request(
            f"{server.http_endpoint}/v1/logs",
            data=request.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
        )
    )


def test_queries_never_fail_while_files_are_committed(server: MallardServer) -> None:
    sent = threading.Event()

    def load() -> None:
        for batch in range(40):
            _send(server, batch)
        sent.set()

    loader = threading.Thread(target=load)
    counts: list[int] = []
    with Store(server.data) as store:
        assert store.sql("select count(*) as n from logs").column("n").to_pylist() == [0]  # empty store
        loader.start()
        while not sent.is_set() or len(counts) < 5:
            counts.append(store.sql("select count(*) as n from logs").column("n")[0].as_py())
        loader.join()
    assert counts == sorted(counts), "a committed file vanished from a later query"
    server.stop()  # drains everything acknowledged
    done = run_cli(["sql", "--data", str(server.data), "--format", "csv", "select count(*) as n from logs"])
    assert done.returncode == 0 and done.stdout.splitlines() == ["n", "8000"]
