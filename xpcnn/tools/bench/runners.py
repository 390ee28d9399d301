"""One model on one framework, its batch on the device, ready to time: xpcnn on a backend, or its PyTorch twin.

Each runner has ``forward()`` (eval mode; torch under ``no_grad``), ``train_step()`` (forward, cross-entropy,
backward, SGD with momentum), ``sync()`` and ``peak_memory()``. The batch is put on the device once, before
timing: the figures are compute, not host-to-device copies.

Peak memory, never estimated:

* CuPy: the default memory pool is emptied of cached blocks, one training step runs, and ``pool.total_bytes()``
  is read: the most the pool held during the step, parameters, gradients and optimizer state included.
* NumPy / array_api_strict: ``tracemalloc`` (NumPy reports its buffers to it) over one separate, untimed
  training step: the peak of *new* host allocations during the step (activations, im2col buffers, gradients of
  the step); parameters allocated before are not included.
* torch CUDA: ``torch.cuda.max_memory_allocated()`` over one step; torch CPU: n/a.
"""
from __future__ import annotations

import gc
import tracemalloc

import numpy as np

from ...backend import Backend
from ...layers import CrossEntropyLoss
from ...models import MODEL_INPUTS, build_model
from ...optim import SGD

LR, MOMENTUM = 0.01, 0.9


class XpcnnRunner:
    """One xpcnn model on one backend with its batch on the device, ready to time."""

    framework = "xpcnn"

    def __init__(self, backend: Backend, model: str, batch_size: int, seed: int = 0):
        c, size, classes = MODEL_INPUTS[model]
        self.backend = backend
        self.model = build_model(model, c, classes, size, backend=backend, seed=seed)
        rng = np.random.default_rng(seed)
        self.host_x = rng.standard_normal((batch_size, c, size, size)).astype(backend.dtype_name)
        self.host_labels = rng.integers(0, classes, batch_size)
        self.x = backend.asarray(self.host_x)            # moved once, before timing
        self.labels = backend.asarray(self.host_labels)
        self.loss_fn = CrossEntropyLoss()
        self.opt = SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.name, self.device = backend.spec, backend.spec

    def forward(self):
        self.model.eval()
        y = self.model(self.x)
        self.model.train()
        return y

    def train_step(self):
        self.opt.zero_grad()
        loss = self.loss_fn(self.model(self.x), self.labels)
        self.model.backward(self.loss_fn.backward(), input_grad=False)  # as torch: no input gradient
        self.opt.step()
        return loss

    def sync(self) -> None:
        self.backend.synchronize()

    def peak_memory(self) -> tuple[int | None, str]:
        """Peak memory of one training step, measured (see the module docstring), or (None, why not)."""
        b = self.backend
        if b.name == "cupy":
            import cupy as cp
            with b.activate():
                pool = cp.get_default_memory_pool()
                b.synchronize()
                pool.free_all_blocks()
                self.train_step()
                b.synchronize()
                return int(pool.total_bytes()), "cupy memory pool total_bytes after 1 step (peak held, incl. params)"
        if b.name in ("numpy", "array_api_strict"):
            gc.collect()
            was_tracing = tracemalloc.is_tracing()
            if not was_tracing:
                tracemalloc.start()
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            self.train_step()
            peak = tracemalloc.get_traced_memory()[1] - base
            if not was_tracing:
                tracemalloc.stop()
            return int(peak), "tracemalloc peak of new host allocations in 1 step (excl. params)"
        return None, "n/a"


class TorchRunner:
    """The same architecture and weights in PyTorch (CPU, or CUDA when the xpcnn side is on a GPU)."""

    framework = "torch"

    def __init__(self, ref: XpcnnRunner, device: str):
        import torch

        from ..torch_compat import to_torch

        self.torch, self.device = torch, device
        self.name = f"torch:{device}"
        self.net = to_torch(ref.model, device=device)
        self.x = torch.from_numpy(ref.host_x).to(device)
        self.labels = torch.from_numpy(ref.host_labels).to(device)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.opt = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM)

    def forward(self):
        self.net.eval()
        with self.torch.no_grad():
            y = self.net(self.x)
        self.net.train()
        return y

    def train_step(self):
        self.opt.zero_grad()
        loss = self.loss_fn(self.net(self.x), self.labels)
        loss.backward()
        self.opt.step()
        return loss

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def peak_memory(self) -> tuple[int | None, str]:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.train_step()
            self.torch.cuda.synchronize()
            return int(self.torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated over 1 step"
        return None, "n/a"
