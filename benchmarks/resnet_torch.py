"""The `xpcnn train --model resnet20 --augment` recipe in PyTorch, for the accuracy and time per epoch beside it.

    python benchmarks/resnet_torch.py --dataset fashion-mnist --epochs 10 --threads 1 --metrics runs/torch.jsonl

Same network and initial weights (``xpcnn.tools.torch_compat.to_torch`` of ``build_model("resnet20", ...)``: He et al.'s
CIFAR ResNet, option A shortcuts, Kaiming-normal convs), the same batches (xpcnn's ``DataLoader``: seeded
shuffle, the crops and flips of ``xpcnn train --augment``, normalised by the training set's mean and std, handed
to PyTorch as NumPy arrays), and the same optimiser: SGD with Nesterov momentum 0.9, weight decay 5e-4 on every
parameter, learning rate 0.05 cosine-decayed per epoch, batch 32 (``xpcnn train``'s defaults). Only the
forward, backward and update run in PyTorch. Time per epoch is the training pass, as ``xpcnn train`` reports it
(the test pass after each epoch is not counted).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    import torch

    import xpcnn
    from xpcnn.cli.train import DEFAULT_LR, DEFAULTS, augmentation
    from xpcnn.datasets import load_dataset
    from xpcnn.tools.torch_compat import to_torch
    from xpcnn.training import cosine_schedule

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    ap.add_argument("--lr", type=float, default=DEFAULT_LR["sgd"])
    ap.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--limit", type=int, default=None, help="first N train and test images (quick runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--metrics", default=None, help="append one JSON object per epoch to this file")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    train, test = load_dataset(args.dataset, args.data_dir)
    if args.limit:
        train, test = train.subset(args.limit), test.subset(args.limit)
    c, size, _ = train.shape
    model = xpcnn.build_model(args.model, c, train.num_classes, size, seed=args.seed)
    net = to_torch(model)
    norm = xpcnn.Normalizer.fit(train)
    aug = None if args.no_augment else augmentation(args.dataset, size)
    loader = xpcnn.DataLoader(train, args.batch_size, shuffle=True, seed=args.seed, normalizer=norm, augment=aug)
    test_loader = xpcnn.DataLoader(test, min(256, len(test)), normalizer=norm)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=args.weight_decay)
    schedule = cosine_schedule(args.lr, args.epochs)
    loss_fn = torch.nn.CrossEntropyLoss()
    print(f"PyTorch {torch.__version__}, {args.threads} thread(s): {args.model} on {args.dataset} "
          f"({len(train)} / {len(test)} images), batch {args.batch_size}, augment {aug}", flush=True)
    for epoch in range(1, args.epochs + 1):
        for group in opt.param_groups:
            group["lr"] = schedule(epoch)
        net.train()
        t0 = time.perf_counter()
        loss_sum = correct = seen = 0.0
        for x, y in loader:
            xt, yt = torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y))
            opt.zero_grad()
            logits = net(xt)
            loss = loss_fn(logits, yt)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(yt)
            correct += float((logits.argmax(1) == yt).sum())
            seen += len(yt)
        seconds = time.perf_counter() - t0
        net.eval()
        right = 0
        with torch.no_grad():
            for x, y in test_loader:
                right += int((net(torch.from_numpy(np.asarray(x))).argmax(1) == torch.from_numpy(np.asarray(y))).sum())
        record = {"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                  "test_accuracy": right / len(test), "seconds": seconds, "images_per_second": seen / seconds,
                  "framework": f"torch {torch.__version__}", "threads": args.threads}
        print(f"epoch {epoch}/{args.epochs}: train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}"
              f" | test acc {record['test_accuracy']:.4f} | {seconds:.1f}s, {record['images_per_second']:.0f} img/s",
              flush=True)
        if args.metrics:
            with open(args.metrics, "a") as f:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
