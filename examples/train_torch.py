"""A small PyTorch training run on the CPU, observed by mallard.

    mallard serve --data ./mallard-data               # another terminal
    python examples/train_torch.py --endpoint localhost:4317 --epochs 3
    python examples/train_torch.py --endpoint localhost:4317 --auto   # an unmodified loop

The model (an MLP 20-64-4) learns a synthetic classification task. The manual mode reports each step
with `run.step(loss=...)` and each epoch with `run.epoch()`; `--auto` uses `autolog()` with the data
loader instead, and reports only the loss. A checkpoint is written (and recorded) after each epoch.
Then `mallard sql "select attributes['ml.step'] as step, attributes['ml.training.loss'] as loss from
spans where name = 'ml.training.step' order by start_time"`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from mallard.instrumentation import configure, shutdown
from mallard.instrumentation.training import autolog, training_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", default="localhost:4317", help="mallard's OTLP gRPC address")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--sample-every", type=int, default=10, help="a step span every N steps")
    parser.add_argument("--auto", action="store_true", help="observe an unmodified loop (autolog)")
    args = parser.parse_args()

    configure(service_name="train-torch", endpoint=args.endpoint, metric_interval_s=5)
    torch.manual_seed(0)
    x = torch.randn(2048, 20)
    y = (x[:, :4].argmax(dim=1) + (x[:, 4] > 1).long()) % 4
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=args.batch_size, shuffle=True
    )
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    params = {"lr": args.lr, "batch_size": args.batch_size, "epochs": args.epochs, "momentum": 0.9}
    checkpoints = Path(tempfile.mkdtemp(prefix="mallard-train-"))

    if args.auto:
        run = autolog(model, optimizer, name="mlp-auto", params=params, dataloader=loader)
        for epoch in range(args.epochs):
            for inputs, labels in loader:  # the loop as it would be without mallard, plus log_loss
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(inputs), labels)
                loss.backward()
                optimizer.step()
                run.log_loss(loss)
            scheduler.step()
            path = checkpoints / f"epoch{epoch}.pt"
            torch.save(model.state_dict(), path)
            run.checkpoint(path, epoch=epoch)
        run.end()
    else:
        with training_run(model, optimizer, name="mlp", params=params, sample_every=args.sample_every) as run:
            for epoch in range(args.epochs):
                with run.epoch(epoch):
                    for inputs, labels in loader:
                        optimizer.zero_grad()
                        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
                        loss.backward()
                        optimizer.step()
                        run.step(loss=loss, batch_size=len(inputs))
                    scheduler.step()
                    path = checkpoints / f"epoch{epoch}.pt"
                    torch.save(model.state_dict(), path)
                    run.checkpoint(path, epoch=epoch)
    print(f"run {run.run_id}: {run.steps} steps, {run.samples} samples, last loss {run.last_loss:.4f}")
    shutdown()


if __name__ == "__main__":
    main()
