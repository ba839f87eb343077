"""A PyTorch model serving predictions on the CPU, observed by mallard.

    mallard serve --data ./mallard-data               # another terminal
    python examples/inference_torch.py --endpoint localhost:4317 --calls 200

Every call's latency and batch size go to the `ml.inference.duration` and `ml.inference.batch_size`
histograms, every `--sample-every`-th call becomes an `ml.inference` span, and one call in fifty is
given a malformed input, so it fails and is recorded as an error. Then `mallard sql "select
attributes['error.type'] as error, count, sum from metrics where metric_name = 'ml.inference.duration'"`.
"""

from __future__ import annotations

import argparse
import random

import torch

from mallard.instrumentation import configure, shutdown
from mallard.instrumentation.inference import instrument_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", default="localhost:4317", help="mallard's OTLP gRPC address")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--sample-every", type=int, default=10, help="a span every N calls")
    args = parser.parse_args()

    configure(service_name="inference-torch", endpoint=args.endpoint, metric_interval_s=5)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).eval()
    handle = instrument_model(model, name="mlp", sample_every=args.sample_every)
    sizes = random.Random(0)
    failed = 0
    with torch.no_grad():
        for call in range(args.calls):
            width = 21 if call % 50 == 49 else 20  # a malformed request now and then
            try:
                model(torch.randn(sizes.choice([1, 4, 16, 64]), width))
            except RuntimeError:
                failed += 1
    print(f"{handle.calls} calls, {failed} failed")
    shutdown()


if __name__ == "__main__":
    main()
