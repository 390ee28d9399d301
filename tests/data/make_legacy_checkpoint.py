"""Writes legacy-v0.1.0.ckpt: a checkpoint in the layout `xpcnn train` wrote with xpcnn 0.1.0's own safetensors
writer (before the safetensors library). Run once with that version; tests/test_checkpoint.py checks it loads."""
from pathlib import Path

import numpy as np

import xpcnn
from xpcnn.checkpoint import save_checkpoint
from xpcnn.models import build_model


def legacy_model_and_step():
    """digits-cnn on 2x2 images, 2 classes, seed 3, after one SGD step on fixed data (momentum state non-zero)."""
    model = build_model("digits-cnn", 1, 2, 2, seed=3)
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss = xpcnn.CrossEntropyLoss()
    x = np.linspace(-1, 1, 16).reshape(4, 1, 2, 2)
    loss(model(x), np.array([0, 1, 1, 0]))
    model.backward(loss.backward())
    opt.step()
    return model, opt


if __name__ == "__main__":
    model, opt = legacy_model_and_step()
    o = {"backend": "numpy", "dataset": "digits", "data_dir": None, "model": "digits-cnn", "epochs": 2,
         "batch_size": 4, "optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "seed": 3, "dtype": "float32",
         "limit": None}
    meta = {"architecture": "digits-cnn", "model_args": {"in_channels": 1, "num_classes": 2, "image_size": 2},
            "options": o, "normalizer": {"mean": [0.5], "std": [0.25], "scale": 16.0}, "class_names": ["a", "b"],
            "history": [{"epoch": 1, "train_loss": 0.69, "train_accuracy": 0.5, "test_loss": 0.7,
                         "test_accuracy": 0.5, "seconds": 0.1, "images_per_second": 40.0, "backend": "numpy"}]}
    data = xpcnn.data.Dataset(np.arange(32, dtype=np.uint8).reshape(8, 1, 2, 2) % 17, np.arange(8) % 2, 2, 16.0,
                              "digits", ("a", "b"))
    loader = xpcnn.data.DataLoader(data, 4, shuffle=True, seed=3)
    next(iter(loader))  # mid-epoch: one of two batches handed out
    save_checkpoint(Path(__file__).with_name("legacy-v0.1.0.ckpt"), model, opt, epoch=1, loader=loader,
                    metadata=meta)
