"""A Flask app sending its spans, metrics and logs to mallard.

    mallard serve --data ./mallard-data               # another terminal
    python examples/flask_app.py --endpoint localhost:4317 --port 5000
    curl localhost:5000/items/7; curl localhost:5000/boom; curl localhost:5000/chain

`/chain` calls `/items/7` of the same app over HTTP inside a CLIENT span and passes the trace context
in the `traceparent` header, so the three spans form one trace. Stop with Ctrl-C (spans, metrics and
logs are flushed), then
`mallard sql "select name, kind, http_status_code, status_code from spans order by start_time"`.
"""

from __future__ import annotations

import argparse
import json
import urllib.request

from flask import Flask, request
from opentelemetry import propagate, trace
from werkzeug.serving import make_server

from mallard.instrumentation import configure, shutdown
from mallard.instrumentation.flask import instrument_flask

app = Flask("shop")


@app.get("/items/<int:item_id>")
def item(item_id: int) -> dict[str, object]:
    return {"id": item_id, "name": f"item {item_id}"}


@app.get("/boom")
def boom() -> str:
    raise ValueError("kaput")  # a 500: the span gets status ERROR and an exception event


@app.get("/chain")
def chain() -> dict[str, object]:
    headers: dict[str, str] = {}
    with trace.get_tracer("shop").start_as_current_span("GET", kind=trace.SpanKind.CLIENT) as span:
        url = request.host_url + "items/7"
        span.set_attributes({"http.request.method": "GET", "url.full": url})
        propagate.inject(headers)  # traceparent: the downstream server span becomes this span's child
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as answer:
            span.set_attribute("http.response.status_code", answer.status)
            return {"downstream": json.loads(answer.read())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="localhost:4317", help="mallard's OTLP gRPC address")
    parser.add_argument("--port", type=int, default=5000, help="port of this app (0: any free one)")
    parser.add_argument("--service", default="shop", help="service.name of the telemetry")
    args = parser.parse_args()
    configure(service_name=args.service, endpoint=args.endpoint, metric_interval_s=10)
    instrument_flask(app, excluded_urls="favicon.ico")
    server = make_server("127.0.0.1", args.port, app, threaded=True)  # threaded: /chain calls this app
    print(f"serving on http://127.0.0.1:{server.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        shutdown()


if __name__ == "__main__":
    main()
