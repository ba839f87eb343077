"""Overhead of `mallard.instrumentation`: PyTorch training (steps/s with vs without) and Flask (µs per
request), exporting to a real `mallard serve` on free ports.

**Training.** A small CPU model: an MLP 784-256-10 with Adam, batches of 64 from an in-memory
DataLoader (1.5-2 ms a step). Four copies of it, each with its own optimizer and loader, train side
by side at the default settings: `bare` (not observed); `control`, not observed either, the
method's noise floor (copies differ a little by where their memory lies); `manual` (one long-lived
`training_run`, `run.step(loss=...)` per step, an epoch per pass); `automatic` (one
`autolog(..., dataloader=...)` on an unmodified loop, `run.log_loss`; a pass over the loader is an
epoch). A job starts one run and trains for minutes, so the runs stay open across the rounds (the
steady state); a run's start and end are measured apart. Each round runs every variant for one
pass, in a shuffled order. The overhead is a per-round ratio (a pass's time over the bare pass's of
the same round, so slow phases of the machine cancel out), summed up by its median and by its mean
with a 95 % confidence interval, by wall clock and by the process's CPU time (all its threads, the
exporters' included; the collector runs elsewhere). Then what the runs say of their own periodic
work (sampled steps, histogram passes, and the share of the training time they took, which the
run's `overhead_budget` bounds), and the cost of the per-step bookkeeping alone, on a loop without
training work (steadier than the difference of two noisy loops).

**Flask.** Two copies of a one-route app in one process, one bare, one with `instrument_flask`;
rounds of requests alternate between them through Werkzeug's test client (the whole WSGI stack, no
sockets, so loopback noise stays out). The figure is the per-request difference of the medians.

    .venv/bin/python benchmarks/instrumentation.py [--rounds 30] [--steps 200] [--only training,flask]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

READY = re.compile(r"ready grpc=(?P<host>[^:\s]+):(?P<grpc>\d+)")


def start_server(data: str) -> tuple[subprocess.Popen[str], str]:
    """`mallard serve` on free ports, without the HTTP API; returns it and its gRPC endpoint."""
    command = [sys.executable, "-m", "mallard.app.cli", "serve", "--data", data]
    command += ["--grpc-port", "0", "--http-port", "0", "--ui", "false"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        match = READY.search(line)
        if match:  # keep reading its output, so a full pipe never blocks it
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, f"{match['host']}:{match['grpc']}"
    raise RuntimeError("mallard serve did not become ready")


def cost_per_step(model: Any, optimizer: Any, steps: int = 2000, repeats: int = 5) -> dict[str, float]:
    """The per-step bookkeeping's own time, in µs, best of `repeats`: a loop with no training work (an
    optimizer whose step does nothing, pre-built batches, the gradients of one real backward pass)
    with and without each mode, without the periodic work (no sampled steps, no histograms: on steps
    that take no time, the overhead budget would space them out to almost nothing anyway)."""
    import torch

    from mallard.instrumentation.training import autolog, training_run

    class IdleOptimizer(torch.optim.Optimizer):
        def __init__(self, params: Any) -> None:
            super().__init__(params, {"lr": 1e-3})

        def step(self, closure: Any = None) -> None:
            return None

    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    idle = IdleOptimizer(model.parameters())
    periodic_off: dict[str, Any] = {"sample_every": 10 * steps, "distributions_every": 0}
    batches = [(x, y)] * steps
    loader = torch.utils.data.DataLoader(batches, batch_size=None)  # hands out the pre-built batches

    def bare() -> None:
        for _ in loader:
            idle.step()

    def manual() -> None:
        with training_run(model, idle, name="cost-manual", **periodic_off) as run:
            for _ in loader:
                idle.step()
                run.step(loss=loss, batch_size=64)

    def automatic() -> None:
        run = autolog(model, idle, name="cost-auto", dataloader=loader, **periodic_off)
        for _ in loader:
            idle.step()
            run.log_loss(loss)
        run.end()

    best: dict[str, float] = {}
    for name, loop in {"bare": bare, "manual": manual, "automatic": automatic}.items():
        times = []
        for _ in range(repeats):
            began = time.perf_counter_ns()
            loop()
            times.append((time.perf_counter_ns() - began) / steps / 1000)
        best[name] = min(times)
    return {name: value - best["bare"] for name, value in best.items() if name != "bare"}


def training(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from mallard.instrumentation.training import autolog, training_run

    def copy() -> tuple[Any, Any, Any]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        dataset = torch.utils.data.TensorDataset(
            torch.randn(64 * args.steps, 784), torch.randint(0, 10, (64 * args.steps,))
        )
        return model, optimizer, torch.utils.data.DataLoader(dataset, batch_size=64)

    def train(parts: tuple[Any, Any, Any], report: Callable[[Any], None] | None) -> None:
        model, optimizer, loader = parts
        for x, y in loader:  # one pass: `steps` steps
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            if report is not None:
                report(loss)

    bare, control, manual_parts, auto_parts = copy(), copy(), copy(), copy()
    manual_run = training_run(manual_parts[0], manual_parts[1], name="bench-manual", params={"lr": 1e-3})
    manual_run.start()
    auto_run = autolog(auto_parts[0], auto_parts[1], name="bench-auto", dataloader=auto_parts[2])

    def manual_epoch() -> None:  # a pass is an epoch, as in a real loop: the time between passes is none
        with manual_run.epoch():
            train(manual_parts, lambda loss: manual_run.step(loss=loss, batch_size=64))

    variants: dict[str, Callable[[], None]] = {
        "bare": lambda: train(bare, None),
        "control": lambda: train(control, None),
        "manual": manual_epoch,
        "automatic": lambda: train(auto_parts, auto_run.log_loss),
    }
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    shuffle = random.Random(0).shuffle
    for variant in variants.values():  # warm-up
        variant()
    for _ in range(args.rounds):
        shuffle(order)
        for name in order:
            began, began_cpu = time.perf_counter(), time.process_time()
            variants[name]()
            cpu[name].append(time.process_time() - began_cpu)
            wall[name].append(time.perf_counter() - began)
    manual_run.end()
    auto_run.end()
    own = {
        name: (run.steps, run.sampled_steps, run.distribution_passes, run.telemetry_ns / run.step_ns)
        for name, run in (("manual", manual_run), ("automatic", auto_run))
    }
    lifecycle = []
    for _ in range(20):  # a run's start and end, apart from the steps
        began_ns = time.perf_counter_ns()
        with training_run(bare[0], bare[1], name="bench-lifecycle", params={"lr": 1e-3}):
            pass
        lifecycle.append((time.perf_counter_ns() - began_ns) / 1e6)
    costs = cost_per_step(bare[0], bare[1])
    print(f"training: torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    print(f"{args.rounds} rounds of {args.steps} steps per variant, in a shuffled order per round")
    print("overhead: per round, the pass's time over the bare pass's time of the same round, - 1;")
    print("the median of the rounds, and their mean with its 95 % confidence interval")
    header = f"{'variant':<10} {'steps/s':>8} {'median':>8} {'mean':>7} {'95 % CI':>16} {'cpu median':>11}"
    print(header)
    for name in variants:
        ratios = [v / b - 1 for v, b in zip(wall[name], wall["bare"], strict=True)]
        cpu_ratios = [v / b - 1 for v, b in zip(cpu[name], cpu["bare"], strict=True)]
        mean = statistics.fmean(ratios)
        half = 1.96 * statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else 0.0
        print(
            f"{name:<10} {args.steps / statistics.median(wall[name]):8.1f}"
            f" {100 * statistics.median(ratios):7.2f}% {100 * mean:6.2f}%"
            f" [{100 * (mean - half):5.2f}, {100 * (mean + half):5.2f}]%"
            f" {100 * statistics.median(cpu_ratios):10.2f}%"
        )
    step_us = statistics.median(wall["bare"]) / args.steps * 1e6
    print(f"a run's start and end: median {statistics.median(lifecycle):.2f} ms")
    print("the periodic work, as the runs measured it (default budget: 0.5 % of the training time)")
    print(f"{'variant':<10} {'steps':>7} {'sampled':>8} {'histograms':>11} {'share':>7}")
    for name, (steps, sampled, passes, share) in own.items():
        print(f"{name:<10} {steps:7d} {sampled:8d} {passes:11d} {100 * share:6.2f}%")
    print(f"the per-step bookkeeping (no training work, no periodic work; bare step {step_us:.0f} µs):")
    for name, micros in costs.items():
        print(f"{name:<10} {micros:6.1f} µs/step = {100 * micros / step_us:5.2f}% of the bare step")


def flask(args: argparse.Namespace) -> None:
    from flask import Flask

    from mallard.instrumentation.flask import instrument_flask

    def make_app(name: str) -> Any:
        app = Flask(name)

        @app.get("/items/<int:item_id>")
        def item(item_id: int) -> dict[str, object]:
            return {"id": item_id, "name": f"item {item_id}"}

        return app

    bare, instrumented = make_app("bare"), make_app("instrumented")
    instrument_flask(instrumented)
    clients = {"bare": bare.test_client(), "instrumented": instrumented.test_client()}

    def timed(client: Any, n: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            assert client.get("/items/7").status_code == 200
        return (time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6

    for client in clients.values():  # warm-up
        timed(client, 200)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
    for _ in range(args.flask_rounds):
        for name, client in clients.items():
            samples[name].append(timed(client, args.requests))
    wall = {name: statistics.median(s[0] for s in runs) for name, runs in samples.items()}
    cpu = {name: statistics.median(s[1] for s in runs) for name, runs in samples.items()}
    print(f"flask: {args.flask_rounds} rounds x {args.requests} requests per app (median)")
    print(f"{'':14}{'wall µs':>10}{'cpu µs':>10}")
    for name in clients:
        print(f"{name:14}{wall[name]:10.1f}{cpu[name]:10.1f}")
    added = wall["instrumented"] - wall["bare"], cpu["instrumented"] - cpu["bare"]
    print(f"{'added':14}{added[0]:10.1f}{added[1]:10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="training rounds (every variant once each)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per variant and round")
    parser.add_argument("--flask-rounds", type=int, default=9, help="flask rounds per app")
    parser.add_argument("--requests", type=int, default=2000, help="flask requests per app and round")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--only", default="training,flask", help="comma-separated: training, flask")
    args = parser.parse_args()

    from mallard.instrumentation import configure, shutdown

    chosen = {part.strip() for part in args.only.split(",")}
    with tempfile.TemporaryDirectory() as data:
        server, endpoint = start_server(os.path.join(data, "store"))
        try:
            configure(service_name="benchmark", endpoint=endpoint, logs=False)
            if "training" in chosen:
                training(args)
            if "flask" in chosen:
                flask(args)
            shutdown()
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
