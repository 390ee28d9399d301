"""Checkpoints: one safetensors file holding tensors and JSON metadata, written atomically.

Layout of a checkpoint file (the documented safetensors format, written here
in a few lines so the core needs no extra dependency; the ``safetensors``
library and PyTorch read it as is):

- model parameters and buffers under PyTorch's names (``"0.weight"``, ``"1.running_mean"``);
- optimizer state under ``"optim.<index>.<name>"``;
- ``__metadata__["xpcnn"]``: JSON with the architecture, options, epoch, RNG states
  (loader shuffle, dropout masks), normalisation, history and versions.

A save goes to a temporary file in the same directory, is fsynced, then
``os.replace``\\ d over the target: an interrupted save never leaves a broken file.
"""
from __future__ import annotations

import json
import os
import platform
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .backend import to_numpy
from .errors import InputTypeError, InputValueError

FORMAT = "xpcnn-checkpoint"
VERSION = 1
OPTIM_PREFIX = "optim."
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "U64": np.uint64,
           "BOOL": np.bool_}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}


# -- the safetensors format ------------------------------------------------
def encode_safetensors(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """Bytes of a safetensors file: u64 header length, JSON header (8-byte aligned), raw little-endian data."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks, offset = [], 0
    for name, a in tensors.items():
        a = np.asarray(a)
        if a.dtype not in _CODES:
            raise InputTypeError(f"checkpoint: tensor {name!r} has unsupported dtype {a.dtype}")
        data = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _CODES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def decode_safetensors(raw: bytes, where: str = "checkpoint") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, metadata)`` from safetensors bytes, with every offset checked."""
    if len(raw) < 8:
        raise InputValueError(f"{where}: not a checkpoint (file too short)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise InputValueError(f"{where}: not a checkpoint or truncated (header length {n} > file size)")
    try:
        header = json.loads(raw[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputValueError(f"{where}: not a checkpoint (unreadable header)") from None
    if not isinstance(header, dict):
        raise InputValueError(f"{where}: not a checkpoint (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    body = memoryview(raw)[8 + n:]
    tensors = {}
    for name, info in header.items():
        try:
            dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
            begin, end = (int(v) for v in info["data_offsets"])
            shape = tuple(int(d) for d in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise InputValueError(f"{where}: bad entry for tensor {name!r}") from None
        if not 0 <= begin <= end <= len(body) or end - begin != int(np.prod(shape)) * dtype.itemsize:
            raise InputValueError(f"{where}: tensor {name!r} lies outside the file (truncated checkpoint?)")
        tensors[name] = np.frombuffer(body[begin:end], dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return tensors, metadata


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot save checkpoint: directory {str(directory)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable (POSIX); not possible everywhere
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _file_mode(path: Path) -> int:
    """The existing file's permissions, else 0666 less the umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


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


class Checkpoint:
    """A loaded checkpoint: ``model_state`` (name -> NumPy), ``optimizer_state`` and ``meta`` (dict)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"checkpoint {self.path!r} does not exist") from None
        except IsADirectoryError:
            raise IsADirectoryError(f"checkpoint {self.path!r} is a directory, not a file") from None
        tensors, metadata = decode_safetensors(raw, self.path)
        try:
            self.meta = json.loads(metadata["xpcnn"])
        except (KeyError, json.JSONDecodeError):
            raise InputValueError(f"{self.path}: a safetensors file, but not an xpcnn checkpoint (no xpcnn metadata)") \
                from None
        if self.meta.get("format") != FORMAT:
            raise InputValueError(f"{self.path}: not an xpcnn checkpoint")
        self.model_state = {k: v for k, v in tensors.items() if not k.startswith(OPTIM_PREFIX)}
        self.optimizer_tensors = {k[len(OPTIM_PREFIX):]: v for k, v in tensors.items() if k.startswith(OPTIM_PREFIX)}

    @property
    def epoch(self) -> int:
        return int(self.meta.get("epoch", 0))

    def optimizer_state(self) -> dict[str, Any] | None:
        info = self.meta.get("optimizer")
        if info is None:
            return None
        return {"steps": info["steps"], "lr": info["lr"], "state": dict(self.optimizer_tensors)}

    def load_into(self, model, optimizer=None, loader=None) -> "Checkpoint":
        """Copy the saved state into ``model`` (any backend) and, if given, ``optimizer`` and ``loader``."""
        arch = self.meta.get("architecture")
        mine = getattr(model, "architecture", None)
        if arch and mine and arch != mine:
            raise InputValueError(f"{self.path}: checkpoint of architecture {arch!r}, but the model is {mine!r}")
        try:
            model.load_state_dict(self.model_state)
        except ValueError as e:
            raise InputValueError(f"{self.path}: checkpoint does not fit this model ({e})") from None
        load_dropout_states(model, self.meta.get("dropout_rng", {}))
        if optimizer is not None:
            saved = self.meta.get("optimizer", {}).get("class")
            if saved and saved != type(optimizer).__name__:
                raise InputValueError(f"{self.path}: checkpoint optimizer is {saved}, not {type(optimizer).__name__}")
            state = self.optimizer_state()
            if state is not None:
                optimizer.load_state_dict(state)
        if loader is not None and "loader" in self.meta:
            loader.load_state_dict(self.meta["loader"])
        return self


def load_checkpoint(path: str | os.PathLike, model=None, optimizer=None, loader=None) -> Checkpoint:
    """Read a checkpoint; with ``model`` (and ``optimizer``, ``loader``) also restore their state."""
    ckpt = Checkpoint(path)
    if model is not None:
        ckpt.load_into(model, optimizer, loader)
    return ckpt
