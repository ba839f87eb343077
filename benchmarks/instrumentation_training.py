"""Overhead of `mallard.instrumentation.training` at its defaults, on a small CPU model.

The model: an MLP 784-256-10 with Adam, batches of 64 from an in-memory DataLoader (about 1-3 ms a
step on a laptop core). The same loop runs bare, in the manual mode (`run.step(loss=...)`) and in the
automatic mode (`autolog(..., dataloader=...)` + `run.log_loss`), on the same model, optimizer and
loader (a run per pass, so its start and end count too), exporting to a real `mallard serve` on free
ports. Each round runs every variant for one pass, in a shuffled order. The overhead compares the
fastest pass of each variant (noise only ever adds time), by wall clock and by the process's CPU
time (all its threads, the exporters' included; the collector runs elsewhere); the median of the
per-round ratios is shown too. `control` is the bare loop again: the method's noise floor. Last, the
instrumentation's own time per step, measured on a loop without training work (steadier than the
difference of two noisy loops), as a share of the bare step. Both by wall clock and by the
process's CPU time (all its threads, the exporters' included; the collector runs elsewhere).

    .venv/bin/python benchmarks/instrumentation_training.py [--rounds 30] [--steps 100]
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
        if match:
            return process, f"{match['host']}:{match['grpc']}"
    raise RuntimeError("mallard serve did not become ready")


def cost_per_step(model: Any, optimizer: Any, steps: int = 2000, repeats: int = 5) -> dict[str, float]:
    """The instrumentation's own time per step at the defaults, in µs, best of `repeats`: a loop with
    no training work (an optimizer whose step does nothing, pre-built batches, the gradients of one
    real backward pass) with and without each mode. Sampled steps and histogram passes are averaged
    over `steps` steps, so they must be a multiple of 500."""
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
    batches = [(x, y)] * steps
    loader = torch.utils.data.DataLoader(batches, batch_size=None)  # hands out the pre-built batches

    def bare() -> None:
        for _ in loader:
            idle.step()

    def manual() -> None:
        with training_run(model, idle, name="cost-manual") as run:
            for _ in loader:
                idle.step()
                run.step(loss=loss, batch_size=64)

    def automatic() -> None:
        run = autolog(model, idle, name="cost-auto", dataloader=loader)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds (each runs every variant once)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per variant and round")
    args = parser.parse_args()

    import torch

    from mallard.instrumentation import configure, shutdown
    from mallard.instrumentation.training import autolog, training_run

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    dataset = torch.utils.data.TensorDataset(
        torch.randn(64 * args.steps, 784), torch.randint(0, 10, (64 * args.steps,))
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=64)

    def train(report: Callable[[torch.Tensor], None] | None) -> None:
        for x, y in loader:  # one pass: `steps` steps
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            if report is not None:
                report(loss)

    def manual() -> None:  # a run per pass: its start and end count as overhead too
        with training_run(model, optimizer, name="bench-manual", params={"lr": 1e-3}) as run:
            train(lambda loss: run.step(loss=loss, batch_size=64))

    def automatic() -> None:
        run = autolog(model, optimizer, name="bench-auto", dataloader=loader)
        train(run.log_loss)
        run.end()

    variants: dict[str, Callable[[], None]] = {
        "bare": lambda: train(None),
        "control": lambda: train(None),  # bare again: the noise floor of the method
        "manual": manual,
        "automatic": automatic,
    }
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    shuffle = random.Random(0).shuffle
    with tempfile.TemporaryDirectory() as data:
        server, endpoint = start_server(os.path.join(data, "store"))
        try:
            configure(service_name="benchmark", endpoint=endpoint)
            for variant in variants.values():  # warm-up
                variant()
            for _ in range(args.rounds):
                shuffle(order)
                for name in order:
                    began, began_cpu = time.perf_counter(), time.process_time()
                    variants[name]()
                    cpu[name].append(time.process_time() - began_cpu)
                    wall[name].append(time.perf_counter() - began)
            costs = cost_per_step(model, optimizer)
            shutdown()
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    print(f"{args.rounds} rounds of {args.steps} steps per variant, in a shuffled order per round")
    print("overhead: of the fastest pass (best of the rounds), and the median of the per-round ratios")
    print(f"{'variant':<10} {'steps/s':>8} {'overhead':>9} {'median':>8} {'steps/cpu-s':>12} {'overhead':>9}")
    for name in variants:
        best, best_cpu = min(wall[name]), min(cpu[name])
        over = best / min(wall["bare"]) - 1
        over_cpu = best_cpu / min(cpu["bare"]) - 1
        median = statistics.median(v / b - 1 for v, b in zip(wall[name], wall["bare"], strict=True))
        print(
            f"{name:<10} {args.steps / best:8.1f} {100 * over:8.2f}% {100 * median:7.2f}%"
            f" {args.steps / best_cpu:12.1f} {100 * over_cpu:8.2f}%"
        )
    step_us = min(wall["bare"]) / args.steps * 1e6
    print(
        f"instrumentation's own time per step at the defaults (no training work; bare step {step_us:.0f} µs):"
    )
    for name, micros in costs.items():
        print(f"{name:<10} {micros:6.1f} µs/step = {100 * micros / step_us:5.2f}% of the bare step")


if __name__ == "__main__":
    main()
