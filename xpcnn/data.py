"""Data sets in memory and the batch loader that feeds a model.

A :class:`Dataset` holds raw host images ``(N, C, H, W)`` (usually uint8) and
integer labels, checked when it is built. A :class:`DataLoader` shuffles with
its own seeded NumPy generator, moves each batch to the model's device once
(raw dtype, so a GPU receives uint8, four times less than float32) and
normalises it there. Its ``state_dict()`` records where the shuffle stands, so
training can resume exactly, even in the middle of an epoch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
from .errors import InputTypeError, InputValueError


@dataclass
class Dataset:
    """Images ``(N, C, H, W)`` with labels ``(N,)`` in ``[0, num_classes)``; ``scale`` is the raw maximum value."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    scale: float = 255.0
    name: str = ""
    class_names: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        what = f"data set {self.name!r}" if self.name else "data set"
        self.images = np.asarray(self.images)
        self.labels = np.asarray(self.labels)
        if self.images.ndim != 4:
            raise InputValueError(f"{what}: images must be (N, C, H, W), got shape {self.images.shape}")
        if self.images.dtype.kind not in "uif":
            raise InputTypeError(f"{what}: images must be numeric, got dtype {self.images.dtype}")
        if self.labels.ndim != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise InputValueError(f"{what}: {self.images.shape[0]} images but labels of shape {self.labels.shape}")
        if self.labels.dtype.kind not in "iu":
            raise InputTypeError(f"{what}: labels must be integers, got dtype {self.labels.dtype}")
        if int(self.num_classes) < 2:
            raise InputValueError(f"{what}: num_classes must be >= 2, got {self.num_classes}")
        self.num_classes = int(self.num_classes)
        if len(self.labels):
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= self.num_classes:
                raise InputValueError(f"{what}: labels must be in [0, {self.num_classes - 1}], got values in [{lo}, {hi}]")
        self.labels = self.labels.astype(np.int64)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, n: int) -> "Dataset":
        """The first ``n`` examples (data sets here are already in random order)."""
        return Dataset(self.images[:n], self.labels[:n], self.num_classes, self.scale, self.name, self.class_names)


@dataclass
class Normalizer:
    """``(raw / scale - mean) / std`` per channel; the statistics come from the training set."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 255.0

    @classmethod
    def fit(cls, data: Dataset) -> "Normalizer":
        """Per-channel mean and standard deviation of ``data`` (in units of ``scale``)."""
        x = data.images.astype(np.float64) / data.scale
        mean = x.mean(axis=(0, 2, 3))
        std = np.maximum(x.std(axis=(0, 2, 3)), 1e-6)
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std), float(data.scale))

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(tuple(d["mean"]), tuple(d["std"]), float(d["scale"]))

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``a, b`` of shape ``(1, C, 1, 1)`` such that normalised = raw * a + b."""
        std = np.asarray(self.std, dtype=np.float64)
        a = 1.0 / (self.scale * std)
        b = -np.asarray(self.mean, dtype=np.float64) / std
        return a.reshape(1, -1, 1, 1), b.reshape(1, -1, 1, 1)

    def apply(self, raw, backend):
        """Move raw images to ``backend`` and normalise them there (one transfer, the rest on the device)."""
        a, b = self._device_affine(backend)
        x = backend.asarray(np.ascontiguousarray(raw)) if isinstance(raw, np.ndarray) else raw
        if x.dtype != backend.dtype:
            x = backend.xp.astype(x, backend.dtype)
        if x.shape[1] != a.shape[1]:
            raise InputValueError(f"images have {x.shape[1]} channel(s), the normaliser expects {a.shape[1]}")
        return x * a + b

    def _device_affine(self, backend):
        cache = getattr(self, "_cache", None)
        if cache is None or cache[0] is not backend:
            a, b = self.affine()
            cache = (backend, backend.asarray(a), backend.asarray(b))
            object.__setattr__(self, "_cache", cache)
        return cache[1], cache[2]


class DataLoader:
    """Batches ``(x, y)`` of a :class:`Dataset` as arrays of ``backend``, normalised, optionally shuffled.

    ``DataLoader(train, batch_size=64, shuffle=True, seed=0, backend=model.backend)``. The shuffle
    generator is ``numpy.random.default_rng(seed)``; one permutation is drawn per epoch.
    """

    def __init__(self, dataset: Dataset, batch_size: int = 64, shuffle: bool = False, seed: int = 0,
                 backend: Any = None, normalizer: Normalizer | None = None, drop_last: bool = False):
        from .backend import get_backend

        if not isinstance(dataset, Dataset):
            raise InputTypeError(f"DataLoader expects an xpcnn.data.Dataset, got {type(dataset).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputValueError(f"batch size must be a positive integer, got {batch_size!r}")
        if len(dataset) == 0:
            raise InputValueError(f"data set {dataset.name!r} is empty")
        if batch_size > len(dataset):
            raise InputValueError(f"batch size {batch_size} is larger than the data set {dataset.name!r} "
                             f"({len(dataset)} examples)")
        self.dataset, self.batch_size = dataset, int(batch_size)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.backend = get_backend(backend if backend is not None else "numpy")
        self.normalizer = normalizer if normalizer is not None else Normalizer.fit(dataset)
        self.rng = np.random.default_rng(seed)
        self._epoch_start = self.rng.bit_generator.state
        self.position = 0          # batches of the current epoch already handed out
        self._resume = False

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        n = len(self.dataset)
        if self._resume:           # finish the epoch a checkpoint was saved in
            self.rng.bit_generator.state = self._epoch_start
            start, self._resume = self.position, False
        else:
            self._epoch_start, start = self.rng.bit_generator.state, 0
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        self.position = start
        for b in range(start, len(self)):
            idx = self._batch_indices(order, b)
            x = self.normalizer.apply(self.dataset.images[idx], self.backend)
            y = self.backend.asarray(self.dataset.labels[idx])
            self.position = b + 1
            yield x, y

    def _batch_indices(self, order: np.ndarray, b: int) -> np.ndarray:
        """The samples of batch ``b`` (``xpcnn.distributed.ShardedLoader`` keeps this rank's shard of them)."""
        return order[b * self.batch_size:(b + 1) * self.batch_size]

    # -- checkpoints ----------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-able: the generator state at the start of this epoch, now, and the batches done."""
        return {"epoch_start": self._epoch_start, "current": self.rng.bit_generator.state,
                "position": self.position, "batches": len(self)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["current"]
        self._epoch_start = state["epoch_start"]
        self.position = int(state["position"])
        if int(state.get("batches", len(self))) != len(self):
            raise InputValueError(f"the saved loader had {state.get('batches')} batches per epoch, this one {len(self)}: "
                             "use the same data set and batch size to resume")
        self._resume = 0 < self.position < len(self)
        if not self._resume:
            self.position = 0
