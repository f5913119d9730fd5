"""Read PyTorch ``.pth`` state dicts into numpy arrays without importing torch.

Supports the legacy pickle-based format (``torch.save(..., _use_new_zipfile_serialization=False)``,
the default before torch 1.6) and the zip format. Only plain tensors in (ordered)
dicts are understood; any other class is refused, so a hostile file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import WeightsFileError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass
class _StorageType:
    dtype: type


@dataclass
class _TensorRef:
    key: str
    dtype: type
    offset: int
    size: tuple
    stride: tuple


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh, storages: dict):
        super().__init__(fh)
        self._storages = storages

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid):
        # legacy: ('storage', type, key, location, numel, view_metadata)
        # zip:    ('storage', type, key, location, numel)
        kind, storage_type, key = pid[0], pid[1], str(pid[2])
        if kind != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
        self._storages.setdefault(key, storage_type.dtype)
        return (key, storage_type.dtype)


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    key, dtype = storage
    return _TensorRef(key, dtype, int(offset), tuple(size), tuple(stride))


def _materialise(obj, buffers: dict[str, np.ndarray]):
    if isinstance(obj, _TensorRef):
        flat = buffers[obj.key]
        itemsize = flat.dtype.itemsize
        if not obj.size:
            return flat[obj.offset].copy()
        view = np.lib.stride_tricks.as_strided(
            flat[obj.offset :], shape=obj.size, strides=tuple(s * itemsize for s in obj.stride)
        )
        return np.array(view, copy=True)
    if isinstance(obj, dict):
        return OrderedDict((k, _materialise(v, buffers)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, buffers) for v in obj)
    return obj


def load_state_dict(path: str | Path) -> "OrderedDict[str, np.ndarray]":
    """The tensors of a ``.pth`` file as numpy arrays, keyed as in ``state_dict()``."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as fh:
        return _load_legacy(fh)


def _load_legacy(fh) -> "OrderedDict[str, np.ndarray]":
    magic = pickle.load(fh)
    if magic != LEGACY_MAGIC:
        raise WeightsFileError("not a PyTorch weights file (bad magic number)")
    protocol = pickle.load(fh)
    if protocol != 1001:
        raise WeightsFileError(f"unsupported PyTorch legacy protocol {protocol}")
    sys_info = pickle.load(fh)
    if not sys_info.get("little_endian", True):
        raise WeightsFileError("big-endian weights files are not supported")
    storages: dict[str, type] = {}
    obj = _Unpickler(fh, storages).load()
    keys = pickle.load(fh)
    buffers: dict[str, np.ndarray] = {}
    for key in keys:
        (numel,) = struct.unpack("<q", fh.read(8))
        dtype = np.dtype(storages[str(key)])
        raw = fh.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise WeightsFileError("weights file is truncated")
        buffers[str(key)] = np.frombuffer(raw, dtype=dtype)
    return _materialise(obj, buffers)


def _load_zip(path: Path) -> "OrderedDict[str, np.ndarray]":
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next(n for n in names if n.endswith("/data.pkl") or n == "data.pkl")
        prefix = pkl[: -len("data.pkl")]
        storages: dict[str, type] = {}
        obj = _Unpickler(io.BytesIO(zf.read(pkl)), storages).load()
        buffers = {
            key: np.frombuffer(zf.read(f"{prefix}data/{key}"), dtype=np.dtype(dtype))
            for key, dtype in storages.items()
        }
    return _materialise(obj, buffers)
