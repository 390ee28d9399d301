"""Data sets in memory and the batch loader that feeds a model.

A :class:`Dataset` holds raw host images ``(N, C, H, W)`` (usually uint8) and
integer labels, checked when it is built. A :class:`DataLoader` shuffles with
its own seeded NumPy generator, moves each batch to the model's device once
(raw dtype, so a GPU receives uint8, four times less than float32) and
normalises it there. :class:`Augment` (random crops of a zero-padded image,
horizontal flips) runs on the host, per batch, before that move. Its
``state_dict()`` records where the shuffle and the augmentation stand, so
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
                raise InputValueError(f"{what}: labels must be in [0, {self.num_classes - 1}], "
                                      f"got values in [{lo}, {hi}]")
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


@dataclass(frozen=True)
class Augment:
    """Random crops and flips of training batches, drawn per image: ``Augment(crop=4, flip=True)``.

    ``crop=p`` zero-pads each raw image by ``p`` on every side and takes a random window of its own size (as
    torchvision's ``RandomCrop(size, padding=p)``: raw zeros, before normalisation); ``flip`` mirrors half the
    images left-right (``RandomHorizontalFlip``; wrong for digits). Applied by :class:`DataLoader` on the host,
    vectorised over the batch: one gather from a window view of the padded batch (a per-image loop of slices was
    slower, and a gather of single pixels slower still: ``docs/measurements.md``).
    """

    crop: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.crop, bool) or not isinstance(self.crop, (int, np.integer)) or self.crop < 0:
            raise InputValueError(f"Augment: crop must be an int >= 0 (pixels of padding), got {self.crop!r}")
        if not isinstance(self.flip, (bool, np.bool_)):
            raise InputTypeError(f"Augment: flip must be True or False, got {self.flip!r}")

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-image ``(top, left, flipped)`` for ``n`` images: offsets in ``[0, 2 * crop]``."""
        top = rng.integers(0, 2 * self.crop + 1, n) if self.crop else np.zeros(n, np.int64)
        left = rng.integers(0, 2 * self.crop + 1, n) if self.crop else np.zeros(n, np.int64)
        flipped = rng.random(n) < 0.5 if self.flip else np.zeros(n, bool)
        return top, left, flipped

    def apply(self, images: np.ndarray, params: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """``images`` ``(B, C, H, W)`` cropped and flipped by ``params`` (what :meth:`draw` gave for them)."""
        from numpy.lib.stride_tricks import sliding_window_view

        top, left, flipped = params
        p = self.crop
        b, c, h, w = images.shape
        padded = np.zeros((b, c, h + 2 * p, w + 2 * p), images.dtype)
        padded[:, :, p:p + h, p:p + w] = images
        windows = sliding_window_view(padded, (h, w), axis=(2, 3))  # (B, C, 2p + 1, 2p + 1, H, W), a view
        out = windows[np.arange(b), :, top, left]                    # one gather of every image's window
        if flipped.any():
            out[flipped] = out[flipped][..., ::-1]
        return out


class DataLoader:
    """Batches ``(x, y)`` of a :class:`Dataset` as arrays of ``backend``, normalised, optionally shuffled.

    ``DataLoader(train, batch_size=64, shuffle=True, seed=0, backend=model.backend)``. The shuffle
    generator is ``numpy.random.default_rng(seed)``; one permutation is drawn per epoch.
    ``augment=Augment(crop=4, flip=True)`` crops and flips every batch it yields (for training loaders only),
    from a generator of its own (``default_rng([seed, 1])``) that draws the whole epoch's crops and flips
    when the epoch starts, so the shuffle does not depend on it and a resumed epoch gets the same ones.
    """

    def __init__(self, dataset: Dataset, batch_size: int = 64, shuffle: bool = False, seed: int = 0,
                 backend: Any = None, normalizer: Normalizer | None = None, drop_last: bool = False,
                 augment: Augment | None = None):
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
        if augment is not None and not isinstance(augment, Augment):
            raise InputTypeError(f"DataLoader: augment must be an xpcnn.Augment, got {type(augment).__name__}")
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self._epoch_start = self.rng.bit_generator.state
        self.augment_rng = np.random.default_rng([seed, 1])
        self._augment_start = self.augment_rng.bit_generator.state
        self.position = 0          # batches of the current epoch already handed out
        self._resume = False

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        n = len(self.dataset)
        if self._resume:           # finish the epoch a checkpoint was saved in
            self.rng.bit_generator.state = self._epoch_start
            self.augment_rng.bit_generator.state = self._augment_start
            start, self._resume = self.position, False
        else:
            self._epoch_start, start = self.rng.bit_generator.state, 0
            self._augment_start = self.augment_rng.bit_generator.state
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        params = self.augment.draw(self.augment_rng, n) if self.augment is not None else None
        self.position = start
        for b in range(start, len(self)):
            batch = self._batch_positions(b, n)
            idx = order[batch]
            raw = self.dataset.images[idx]
            if params is not None:
                raw = self.augment.apply(raw, tuple(p[batch] for p in params))
            x = self.normalizer.apply(raw, self.backend)
            y = self.backend.asarray(self.dataset.labels[idx])
            self.position = b + 1
            yield x, y

    def _batch_positions(self, b: int, n: int) -> slice:
        """Batch ``b``'s positions in the epoch's order (``xpcnn.distributed.ShardedLoader`` keeps this rank's
        shard of them)."""
        return slice(b * self.batch_size, min((b + 1) * self.batch_size, n))

    # -- checkpoints ----------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-able: the generators' states at the start of this epoch and now, and the batches done."""
        state = {"epoch_start": self._epoch_start, "current": self.rng.bit_generator.state,
                 "position": self.position, "batches": len(self)}
        if self.augment is not None:
            state["augment"] = {"crop": int(self.augment.crop), "flip": bool(self.augment.flip),
                                "epoch_start": self._augment_start, "current": self.augment_rng.bit_generator.state}
        return state

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("augment")
        mine = None if self.augment is None else {"crop": int(self.augment.crop), "flip": bool(self.augment.flip)}
        mid_epoch = 0 < int(state["position"]) < int(state.get("batches", len(self)))
        same = saved is None and mine is None or (saved is not None and mine is not None
                                                  and (saved["crop"], saved["flip"]) == (mine["crop"], mine["flip"]))
        if mid_epoch and not same:
            was = "no augmentation" if saved is None else f"crop {saved['crop']}, flip {saved['flip']}"
            now = "none" if mine is None else f"crop {mine['crop']}, flip {mine['flip']}"
            raise InputValueError(f"the saved loader used {was}, this one {now}: use the same augmentation to "
                                  "resume (or resume from the end of an epoch)")
        if saved is not None and mine is not None:
            self.augment_rng.bit_generator.state = saved["current"]
            self._augment_start = saved["epoch_start"]
        self.rng.bit_generator.state = state["current"]
        self._epoch_start = state["epoch_start"]
        self.position = int(state["position"])
        if int(state.get("batches", len(self))) != len(self):
            raise InputValueError(f"the saved loader had {state.get('batches')} batches per epoch, "
                                  f"this one {len(self)}: "
                                  "use the same data set and batch size to resume")
        self._resume = 0 < self.position < len(self)
        if not self._resume:
            self.position = 0
