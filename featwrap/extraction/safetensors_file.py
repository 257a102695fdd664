"""The safetensors file that holds every layer: dtypes, header, and where each row goes.

A features file is a standard safetensors file (any framework reads it) with one tensor per layer,
``(rows, *feature shape)``. Its size is known before the first row is computed, so the file is
allocated once and every process writes its rows in place, and each layer can be memory-mapped
as one tensor. Tensors are laid out by decreasing item size after a header padded to 8 bytes, so
every tensor starts at an offset its dtype can be viewed at.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from featwrap.errors import FeatwrapValueError

__all__ = ["DTYPES", "FilePlan", "LayerSlot", "dtype_from_name", "index_runs", "read_header"]

#: torch dtype -> safetensors dtype name.
DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
for _name in ("uint16", "uint32", "uint64"):
    if hasattr(torch, _name):
        DTYPES[getattr(torch, _name)] = "U" + _name[4:]
_BY_NAME = {v: k for k, v in DTYPES.items()}

_ALIGN = 8


def dtype_from_name(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name (``"F32"``)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise FeatwrapValueError(
            f"Unknown safetensors dtype {name!r}; known: {', '.join(_BY_NAME)}."
        ) from None


@dataclass(frozen=True)
class LayerSlot:
    """One layer in the file: its per-row shape and dtype and its byte range after the header."""

    key: str
    shape: tuple[int, ...]  # one row's shape
    dtype: str  # safetensors name
    start: int
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtype_from_name(self.dtype)

    @property
    def row_bytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * self.torch_dtype.itemsize


@dataclass(frozen=True)
class FilePlan:
    """Rows and layers of a features file, in the order the layers were requested."""

    rows: int
    layers: tuple[LayerSlot, ...]
    metadata: tuple[tuple[str, str], ...] = ()

    @classmethod
    def plan(
        cls,
        rows: int,
        shapes: dict[str, tuple[tuple[int, ...], torch.dtype]],
        metadata: dict[str, str] | None = None,
    ) -> FilePlan:
        """Place the layers ``{key: (row shape, dtype)}`` in a file of ``rows`` rows."""
        order = sorted(shapes, key=lambda k: -shapes[k][1].itemsize)  # stable: request order
        placed: dict[str, LayerSlot] = {}
        offset = 0
        for key in order:
            shape, dtype = shapes[key]
            if dtype not in DTYPES:
                raise FeatwrapValueError(
                    f"Layer {key!r} has dtype {dtype}, which safetensors cannot store; pass "
                    "dtype=torch.float32 (--dtype float32) or a pool callable that converts it."
                )
            n = rows * dtype.itemsize
            for d in shape:
                n *= d
            placed[key] = LayerSlot(key, tuple(shape), DTYPES[dtype], offset, offset + n)
            offset += n
        return cls(rows, tuple(placed[k] for k in shapes), tuple(sorted((metadata or {}).items())))

    def __getitem__(self, key: str) -> LayerSlot:
        for layer in self.layers:
            if layer.key == key:
                return layer
        raise KeyError(key)

    @property
    def data_bytes(self) -> int:
        return max((layer.end for layer in self.layers), default=0)

    def header(self) -> bytes:
        """The 8-byte length and the JSON header, padded with spaces to a multiple of 8 bytes."""
        entries: dict[str, Any] = {}
        if self.metadata:
            entries["__metadata__"] = dict(self.metadata)
        for layer in sorted(self.layers, key=lambda la: la.start):
            entries[layer.key] = {
                "dtype": layer.dtype,
                "shape": [self.rows, *layer.shape],
                "data_offsets": [layer.start, layer.end],
            }
        text = json.dumps(entries, separators=(",", ":")).encode()
        text += b" " * (-(8 + len(text)) % _ALIGN)
        return struct.pack("<Q", len(text)) + text

    @property
    def data_start(self) -> int:
        return len(self.header())

    @property
    def file_bytes(self) -> int:
        return self.data_start + self.data_bytes

    def with_rows(self, rows: int) -> FilePlan:
        """The same layers in a file of ``rows`` rows (after leaving skipped samples out)."""
        shapes = {la.key: (la.shape, la.torch_dtype) for la in self.layers}
        return FilePlan.plan(rows, shapes, dict(self.metadata))

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "layers": {la.key: {"shape": list(la.shape), "dtype": la.dtype} for la in self.layers},
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FilePlan:
        shapes = {
            key: (tuple(v["shape"]), dtype_from_name(v["dtype"]))
            for key, v in obj["layers"].items()
        }
        return cls.plan(int(obj["rows"]), shapes, obj.get("metadata") or {})


def read_header(data: bytes | memoryview) -> tuple[int, dict[str, Any]]:
    """``(data start, header dict)`` of a safetensors file whose first bytes are ``data``."""
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    header: dict[str, Any] = json.loads(bytes(data[8 : 8 + n]))
    return 8 + n, header


def index_runs(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive runs ``[(start, stop), ...]`` of increasing indices.

    >>> index_runs([0, 1, 2, 5, 6, 9])
    [(0, 3), (5, 7), (9, 10)]
    """
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs
