"""xpcnn 0.1.0's own safetensors reader, verbatim (its errors as plain ValueError): the test that checkpoints written
with the safetensors library still load in that version reads them with this."""
import json
import struct

import numpy as np

InputValueError = ValueError

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "U64": np.uint64,
           "BOOL": np.bool_}


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
