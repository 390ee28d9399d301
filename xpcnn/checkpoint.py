"""Checkpoints: one safetensors file holding tensors and JSON metadata, written atomically.

Layout of a checkpoint file (written and read with the ``safetensors`` library's NumPy API, so
PyTorch and every safetensors reader load it as is):

- model parameters and buffers under PyTorch's names (``"0.weight"``, ``"1.running_mean"``);
- optimizer state under ``"optim.<index>.<name>"``;
- ``__metadata__["xpcnn"]``: JSON with the architecture, options, epoch, RNG states
  (loader shuffle, dropout masks), normalisation, history and versions.

A save goes through :func:`xpcnn.files.atomic_write` (temporary file, fsync, rename; symlinks
written through, non-regular files refused): an interrupted save never leaves a broken file.
A load checks the metadata's structure (:data:`META_SCHEMA`) and every tensor's dtype, so a
hand-edited file fails with one line naming the file and the key.
"""
from __future__ import annotations

import json
import math
import os
import platform
import stat
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .backend import to_numpy
from .errors import InputError, InputTypeError, InputValueError
from .files import atomic_write

FORMAT = "xpcnn-checkpoint"
VERSION = 1
OPTIM_PREFIX = "optim."


# -- the safetensors format ------------------------------------------------
def encode_safetensors(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """Bytes of a safetensors file (the ``safetensors`` library's writer)."""
    from safetensors.numpy import save

    arrays = {}
    for name, a in tensors.items():
        a = np.asarray(a, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        if a.dtype.kind not in "biuf":
            raise InputTypeError(f"checkpoint: tensor {name!r} has unsupported dtype {a.dtype}")
        arrays[name] = a
    return save(arrays, metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None)


def decode_safetensors(raw: bytes, where: str = "checkpoint") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, metadata)`` from safetensors bytes; the library checks every offset (no overlaps, no gaps)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        tensors = load(bytes(raw))
    except SafetensorError as e:
        reason = str(e).removeprefix("Error while deserializing: ")
        hint = " (truncated?)" if "not fully covered" in reason or "too small" in reason else ""
        raise InputValueError(f"{where}: not a checkpoint or a damaged one: {reason}{hint}") from None
    (n,) = struct.unpack("<Q", raw[:8])  # the library has checked the header: valid JSON of string metadata
    metadata = json.loads(bytes(raw[8:8 + n])).get("__metadata__") or {}
    return tensors, metadata


# -- training state --------------------------------------------------------
def dropout_states(model) -> dict[str, Any]:
    """Mask-generator state of every Dropout layer that has drawn (by layer path)."""
    out = {}
    for m in model.modules():
        source = getattr(m, "_random", None)  # Dropout's lazily created UniformSource
        if source is not None and hasattr(source, "state_dict"):
            out[m.path] = source.state_dict()
    return out


def load_dropout_states(model, states: dict[str, Any]) -> None:
    """Restore what :func:`dropout_states` saved (on whatever backend the model is now)."""
    for m in model.modules():
        if m.path in states and hasattr(m, "_random"):
            source = m.backend.uniform_source(m._seed)
            source.load_state_dict(states[m.path])
            m._random, m._random_backend = source, m.backend


def versions() -> dict[str, str]:
    from . import __version__
    return {"xpcnn": __version__, "numpy": np.__version__, "python": platform.python_version()}


def save_checkpoint(path: str | os.PathLike, model, optimizer=None, *, epoch: int = 0, loader=None,
                    metadata: dict[str, Any] | None = None) -> None:
    """Save model (+ optimizer, loader and dropout RNG state, ``epoch``, extra ``metadata``) atomically."""
    tensors = {name: to_numpy(a) for name, a in model.state_dict().items()}
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "epoch": int(epoch), "dtype": model.dtype,
                            "saved_on": model.backend.spec, "versions": versions(),
                            "layers": [repr(layer) for layer in model], "dropout_rng": dropout_states(model)}
    if optimizer is not None:
        sd = optimizer.state_dict()
        for key, value in sd["state"].items():
            tensors[OPTIM_PREFIX + key] = to_numpy(value)
        meta["optimizer"] = {"class": type(optimizer).__name__, "steps": sd["steps"], "lr": sd["lr"]}
    if loader is not None:
        meta["loader"] = loader.state_dict()
    meta.update(metadata or {})
    atomic_write(path, encode_safetensors(tensors, {"xpcnn": json.dumps(meta)}))


# What each metadata entry must be when present (``float`` accepts integers too; ``int`` never accepts bools).
# A checkpoint edited by hand fails here with one line naming the file and the key, not deep in a restore.
META_SCHEMA: dict[str, Any] = {
    "epoch": int, "dtype": str, "saved_on": str, "versions": dict, "layers": list, "dropout_rng": dict,
    "optimizer": {"class": str, "steps": int, "lr": float},
    "loader": {"epoch_start": dict, "current": dict, "position": int, "batches": int},
    "architecture": str, "model_args": {"in_channels": int, "num_classes": int, "image_size": int},
    "options": dict, "normalizer": {"mean": list, "std": list, "scale": float}, "class_names": list, "history": list,
}
TRAIN_KEYS = ("architecture", "model_args", "normalizer", "loader", "optimizer")  # what `xpcnn train` resumes from


def _check_meta(meta: Any, where: str) -> None:
    if not isinstance(meta, dict):
        raise InputValueError(f"{where}: checkpoint metadata is a {type(meta).__name__}, not a JSON object")
    if meta.get("format") != FORMAT:
        raise InputValueError(f"{where}: not an xpcnn checkpoint")
    _check_fields(meta, META_SCHEMA, where, "")
    _check_values(meta, where)


def _check_fields(value: dict, schema: dict, where: str, prefix: str) -> None:
    """Top-level entries are optional (a checkpoint saved from Python has fewer); nested ones are required."""
    for key, kind in schema.items():
        name = prefix + key
        if key not in value:
            if prefix:
                raise InputValueError(f"{where}: checkpoint metadata has no {name!r}")
            continue
        v = value[key]
        if isinstance(kind, dict):
            if not isinstance(v, dict):
                raise InputValueError(f"{where}: checkpoint metadata {name!r} must be an object, got {_json_kind(v)}")
            _check_fields(v, kind, where, name + ".")
        elif not _is(v, kind):
            raise InputValueError(f"{where}: checkpoint metadata {name!r} must be {_json_name(kind)}, "
                                  f"got {_json_kind(v)}")
        elif kind is int and v < 0:
            raise InputValueError(f"{where}: checkpoint metadata {name!r} must be >= 0, got {v}")


def _check_values(meta: dict, where: str) -> None:
    """The entries whose contents, not only types, the commands rely on."""
    def bad(key: str, what: str):
        raise InputValueError(f"{where}: checkpoint metadata {key!r} must be {what}")
    if any(v < 1 for v in meta.get("model_args", {}).values() if _is(v, int)):
        bad("model_args", "positive integers")
    norm = meta.get("normalizer")
    if norm is not None:
        mean, std = norm["mean"], norm["std"]
        if not (mean and len(mean) == len(std) and all(_is(v, float) and math.isfinite(v) for v in mean + std)
                and all(v > 0 for v in std) and math.isfinite(norm["scale"]) and norm["scale"] > 0):
            bad("normalizer", "equally long lists of finite means and positive std and a positive scale")
    if not all(isinstance(r, dict) for r in meta.get("history", [])):
        bad("history", "a list of objects")
    names, classes = meta.get("class_names"), meta.get("model_args", {}).get("num_classes")
    if names and (not all(isinstance(c, str) for c in names) or (classes is not None and len(names) != classes)):
        bad("class_names", f"a list of {classes if classes is not None else 'the'} class names (strings)")


def _is(v: Any, kind: type) -> bool:
    if isinstance(v, bool):
        return kind is bool
    return isinstance(v, (int, float)) if kind is float else isinstance(v, kind)


def _json_name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}[kind]


def _json_kind(v: Any) -> str:
    for kind in (bool, int, float, str, list, dict):
        if isinstance(v, kind):
            return "true/false" if kind is bool else _json_name(kind)
    return "null" if v is None else type(v).__name__


class Checkpoint:
    """A loaded checkpoint: ``model_state`` (name -> NumPy), ``optimizer_state`` and ``meta`` (dict)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise FileNotFoundError(f"checkpoint {self.path!r} does not exist") from None
        if not stat.S_ISREG(mode):  # a FIFO would block, /dev/zero never ends
            raise InputValueError(f"checkpoint {self.path!r} is not a regular file")
        raw = Path(path).read_bytes()
        tensors, metadata = decode_safetensors(raw, self.path)
        try:
            self.meta = json.loads(metadata["xpcnn"])
        except (KeyError, json.JSONDecodeError):
            raise InputValueError(f"{self.path}: a safetensors file, but not an xpcnn checkpoint (no xpcnn metadata)") \
                from None
        _check_meta(self.meta, self.path)
        self.model_state = {k: v for k, v in tensors.items() if not k.startswith(OPTIM_PREFIX)}
        self.optimizer_tensors = {k[len(OPTIM_PREFIX):]: v for k, v in tensors.items() if k.startswith(OPTIM_PREFIX)}

    def require(self, *keys: str) -> None:
        """Refuse, naming the first missing key, a checkpoint that lacks what the caller needs."""
        for key in keys:
            if key not in self.meta:
                raise InputValueError(f"{self.path}: checkpoint metadata has no {key!r}")

    @property
    def epoch(self) -> int:
        return int(self.meta.get("epoch", 0))

    def optimizer_state(self) -> dict[str, Any] | None:
        info = self.meta.get("optimizer")
        if info is None:
            return None
        return {"steps": info["steps"], "lr": info["lr"], "state": dict(self.optimizer_tensors)}

    @contextmanager
    def _restoring(self, key: str):
        """Turn a malformed nested entry (an RNG state edited by hand) into one line naming the file and key."""
        try:
            yield
        except InputError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise InputValueError(f"{self.path}: checkpoint metadata {key!r} is malformed "
                                  f"({type(e).__name__}: {e})") from None

    def _check_dtypes(self, model) -> None:
        """Each tensor must be of the kind the model holds there, and floats of the dtype the checkpoint records."""
        saved = self.meta.get("dtype")
        mine = {k: np.dtype(to_numpy(v).dtype).kind for k, v in model.state_dict().items()}
        tensors = [(k, v, mine.get(k)) for k, v in self.model_state.items()]
        tensors += [(OPTIM_PREFIX + k, v, "f") for k, v in self.optimizer_tensors.items()]
        for key, value, kind in tensors:
            if kind is not None and (value.dtype.kind != kind or (kind == "f" and saved and value.dtype != saved)):
                want = saved if kind == "f" and saved else {"f": "floating", "i": "integer", "u": "integer",
                                                              "b": "bool"}.get(kind, kind)
                raise InputValueError(f"{self.path}: tensor {key!r} is {value.dtype}, the model needs {want}")

    def load_into(self, model, optimizer=None, loader=None) -> "Checkpoint":
        """Copy the saved state into ``model`` (any backend) and, if given, ``optimizer`` and ``loader``."""
        arch = self.meta.get("architecture")
        mine = getattr(model, "architecture", None)
        if arch and mine and arch != mine:
            raise InputValueError(f"{self.path}: checkpoint of architecture {arch!r}, but the model is {mine!r}")
        self._check_dtypes(model)
        try:
            model.load_state_dict(self.model_state)
        except ValueError as e:
            raise InputValueError(f"{self.path}: checkpoint does not fit this model ({e})") from None
        with self._restoring("dropout_rng"):
            load_dropout_states(model, self.meta.get("dropout_rng", {}))
        if optimizer is not None:
            saved = self.meta.get("optimizer", {}).get("class")
            if saved and saved != type(optimizer).__name__:
                raise InputValueError(f"{self.path}: checkpoint optimizer is {saved}, not {type(optimizer).__name__}")
            state = self.optimizer_state()
            if state is not None:
                with self._restoring("optimizer"):
                    optimizer.load_state_dict(state)
        if loader is not None and "loader" in self.meta:
            with self._restoring("loader"):
                state = self.meta["loader"]
                # epoch_start is only applied when iteration restarts: probe it now, on a spare generator
                type(loader.rng.bit_generator)().state = state["epoch_start"]
                loader.load_state_dict(state)
        return self


def load_checkpoint(path: str | os.PathLike, model=None, optimizer=None, loader=None) -> Checkpoint:
    """Read a checkpoint; with ``model`` (and ``optimizer``, ``loader``) also restore their state."""
    ckpt = Checkpoint(path)
    if model is not None:
        ckpt.load_into(model, optimizer, loader)
    return ckpt
