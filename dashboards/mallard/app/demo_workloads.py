"""The workloads of `mallard demo`, one per process: `python -m mallard.app.demo_workloads NAME
--endpoint HOST:PORT --duration SECONDS`. Each is instrumented only through `mallard.instrumentation`,
as a user's code would be; the random generators are seeded, so two runs send the same shapes.

Exit status: 0 done, 3 skipped (an optional package is missing; the reason is printed), 1 failed.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import propagate, trace

from mallard.app.demo import SKIPPED
from mallard.instrumentation import configure, shutdown

METRIC_INTERVAL_S: Final = 5.0  # so the metric dashboards fill within the demo's first minute
logger = logging.getLogger("mallard.demo")


class _Clock:
    """Until the deadline or SIGINT/SIGTERM, whichever comes first."""

    def __init__(self, duration: float) -> None:
        self.deadline = time.monotonic() + duration
        self.stopped = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopped.set())

    def running(self) -> bool:
        return not self.stopped.is_set() and time.monotonic() < self.deadline

    def pause(self, seconds: float) -> None:
        self.stopped.wait(max(0.0, min(seconds, self.deadline - time.monotonic())))


# --- shop: two Flask services, one calling the other ------------------------------------------


def _serve_flask(app: Any) -> tuple[Any, int]:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_port)


def run_inventory(args: argparse.Namespace, clock: _Clock) -> None:
    from flask import Flask, abort

    from mallard.instrumentation.flask import instrument_flask

    app = Flask("demo-inventory")
    stock = {f"sku-{i}": 10 + i for i in range(20)}

    @app.get("/stock/<sku>")
    def get_stock(sku: str) -> dict[str, object]:
        if sku not in stock:
            abort(404)
        time.sleep(random.uniform(0.002, 0.02))
        if random.random() < 0.03:
            raise RuntimeError(f"stock database timeout for {sku}")
        return {"sku": sku, "available": stock[sku]}

    instrument_flask(app)
    server, port = _serve_flask(app)
    print(f"port {port}", flush=True)
    while clock.running():
        clock.pause(1)
    server.shutdown()


def run_shop(args: argparse.Namespace, clock: _Clock) -> None:
    from flask import Flask

    from mallard.instrumentation.flask import instrument_flask

    inventory = subprocess.Popen(
        [sys.executable, "-m", "mallard.app.demo_workloads", "inventory",
         "--endpoint", args.endpoint, "--duration", str(args.duration + 5),
         *(["--token", args.token] if args.token else [])],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert inventory.stdout is not None
    line = inventory.stdout.readline()
    if not line.startswith("port "):
        raise RuntimeError(f"the inventory service did not start: {line!r}")
    inventory_url = f"http://127.0.0.1:{int(line.split()[1])}"
    tracer = trace.get_tracer("mallard.demo.shop")
    app = Flask("demo-frontend")

    @app.get("/checkout/<int:order>")
    def checkout(order: int) -> tuple[dict[str, object], int]:
        sku = f"sku-{random.randrange(22)}"  # sku-20 and sku-21 do not exist: 404 downstream
        logger.info("checkout of order %d for %s", order, sku, extra={"order.id": order})
        with tracer.start_as_current_span("GET", kind=trace.SpanKind.CLIENT) as span:
            url = f"{inventory_url}/stock/{sku}"
            span.set_attributes({"http.request.method": "GET", "url.full": url, "server.port": 0})
            headers: dict[str, str] = {}
            propagate.inject(headers)
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
                    span.set_attribute("http.response.status_code", r.status)
                    return {"order": order, "stock": r.read().decode()}, 200
            except urllib.error.HTTPError as error:
                span.set_attribute("http.response.status_code", error.code)
                span.set_status(trace.StatusCode.ERROR)
                logger.warning("inventory answered %d for %s", error.code, sku)
                return {"order": order, "error": f"inventory {error.code}"}, 502

    instrument_flask(app)
    server, port = _serve_flask(app)
    order = 0
    while clock.running():
        order += 1
        path = f"/checkout/{order}" if random.random() > 0.02 else "/checkout/none"  # 404, no route
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10):
                pass
        except urllib.error.HTTPError:
            pass
        clock.pause(random.expovariate(20))  # ~20 requests/s
    server.shutdown()
    inventory.send_signal(signal.SIGTERM)
    inventory.wait(timeout=60)


# --- llm: an assistant calling two chat models and an embedding model ------------------------

_QUESTIONS: Final = ("refund policy", "reset password", "shipping to Norway", "invoice copy", "api limits")


def run_llm(args: argparse.Namespace, clock: _Clock) -> None:
    from mallard.instrumentation.llm import llm_span

    tracer = trace.get_tracer("mallard.demo.assistant")
    while clock.running():
        question = random.choice(_QUESTIONS)
        with tracer.start_as_current_span("answer question") as root:
            root.set_attribute("demo.topic", question)
            with llm_span("text-embedding-3-small", provider="openai", operation="embeddings") as call:
                clock.pause(random.uniform(0.01, 0.03))
                call.record_response(model="text-embedding-3-small", input_tokens=random.randint(5, 20))
            model = "gpt-4o-mini" if random.random() < 0.7 else "claude-3-5-haiku"
            provider = "openai" if model.startswith("gpt") else "anthropic"
            try:
                with llm_span(model, provider=provider, temperature=0.2, max_tokens=512) as call:
                    clock.pause(random.lognormvariate(-1.5, 0.5))
                    if random.random() < 0.04:
                        raise TimeoutError("upstream model timed out")
                    prompt = random.randint(300, 1500)
                    call.record_response(
                        model=f"{model}-2024-07-18" if provider == "openai" else model,
                        input_tokens=prompt,
                        output_tokens=random.randint(20, 400),
                        cached_tokens=prompt // 2 if random.random() < 0.3 else 0,
                        finish_reasons=["stop" if random.random() < 0.95 else "length"],
                    )
            except TimeoutError:
                logger.exception("answering %r failed", question)
        clock.pause(random.expovariate(4))


# --- training: a small MLP on synthetic data, CPU ----------------------------------------------


def run_training(args: argparse.Namespace, clock: _Clock) -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from mallard.instrumentation.training import training_run

    torch.manual_seed(7)
    features = torch.randn(4096, 32)
    targets = (features[:, :4].sum(dim=1) > 0).long()
    loader = DataLoader(TensorDataset(features, targets), batch_size=64, shuffle=True)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.7)
    params = {"lr": 0.05, "momentum": 0.9, "batch_size": 64, "hidden": 64}
    with training_run(
        model, optimizer, name="demo-mlp", params=params, dataloader=loader, auto=True, sample_every=5,
        distributions_every=50,
    ) as run:  # fmt: skip
        epoch = 0
        while clock.running():
            for x, y in loader:  # an unmodified loop: the hooks see the steps and the epoch
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                run.log_loss(loss)
                clock.pause(0.005)  # a gentler pace, so the demo leaves CPU to the others
                if not clock.running():
                    break
            scheduler.step()
            epoch += 1
            run.checkpoint(f"/tmp/demo-mlp-epoch{epoch}.pt", epoch=epoch)


# --- model: predictions, labels a few seconds later, drift halfway ---------------------------


def run_model(args: argparse.Namespace, clock: _Clock) -> None:
    from mallard.instrumentation.quality import log_label, log_prediction

    started = time.monotonic()
    pending: deque[tuple[float, str, int]] = deque()
    n = 0
    while clock.running():
        n += 1
        drifted = time.monotonic() - started > args.duration / 2
        income = random.gauss(62_000 if drifted else 48_000, 9_000)
        tenure = random.randint(1, 60)
        plan = random.choice(("free", "pro", "team") if not drifted else ("free", "free", "pro"))
        risk = 1 / (1 + math.exp((income - 50_000) / 8_000 + tenure / 20 - 1.5))
        version = "v2" if n % 4 == 0 else "v1"  # a canary at a quarter of the traffic
        score = min(1.0, max(0.0, risk + random.gauss(0, 0.15 if version == "v1" else 0.1)))
        prediction_id = f"req-{n}"
        log_prediction(
            "churn", version, prediction_id,
            features={"income": round(income, 2), "tenure_months": tenure, "plan": plan},
            prediction=int(score > 0.5), score=round(score, 4),
            segment=random.choice(("eu", "us")),
        )  # fmt: skip
        if random.random() < 0.85:  # some predictions never get a label
            label = int(random.random() < risk)
            pending.append((time.monotonic() + random.uniform(2, 8), prediction_id, label))
        while pending and pending[0][0] <= time.monotonic():
            _, label_id, label = pending.popleft()
            log_label(label_id, label, model="churn")
        clock.pause(random.expovariate(10))
    for _, label_id, label in pending:  # the rest arrive at the end
        log_label(label_id, label, model="churn")


_WORKLOADS: Final[dict[str, tuple[str, Callable[[argparse.Namespace, _Clock], None], str | None]]] = {
    "shop": ("demo-frontend", run_shop, "flask"),
    "inventory": ("demo-inventory", run_inventory, "flask"),
    "llm": ("demo-assistant", run_llm, None),
    "training": ("demo-trainer", run_training, "torch"),
    "model": ("demo-scorer", run_model, None),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mallard-demo-workload")
    parser.add_argument("workload", choices=sorted(_WORKLOADS))
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--token", default=None)
    args = parser.parse_args(argv)
    service, run, extra = _WORKLOADS[args.workload]
    if extra is not None:
        try:
            __import__(extra)
        except ImportError:
            print(f"mallard demo: {args.workload} skipped: pip install 'mallard[{extra}]'", flush=True)
            return SKIPPED
    random.seed(f"{args.workload}-demo")
    configure(
        service_name=service, endpoint=args.endpoint, token=args.token, metric_interval_s=METRIC_INTERVAL_S
    )
    clock = _Clock(args.duration)
    try:
        run(args, clock)
    except Exception:
        logger.exception("demo workload %s failed", args.workload)
        return 1
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
