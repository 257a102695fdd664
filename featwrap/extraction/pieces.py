"""Rows written shard by shard, when their number is not known in advance (streams, tokens).

While the run goes on, each shard's rows are appended to its own piece,
``DIR/.featwrap-run/pieces/NNNNNN/`` (one raw file per layer, plus the token counts of a per-token
layer), and committed by ``shards/NNNNNN.json`` (its sample keys, row shapes and dtypes, and the
identity of its file), written after the piece is flushed. A killed run recomputes only the shards
without a marker. Once every shard is committed, rank 0 concatenates the pieces in shard order
into one standard ``features.safetensors`` (a per-token layer as its tokens ``(tokens, *shape)``
and ``KEY/offsets``, ``(rows + 1,)``), then writes the manifest; as in ``store.py``, each file
appears under its final name only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from featwrap._text import dtype_name
from featwrap.extraction.errors import DataError, OutputError
from featwrap.extraction.safetensors_file import DTYPES, dtype_from_name
from featwrap.extraction.store import Output, write_atomic
from featwrap.extraction.tokens import Ragged

__all__ = ["OFFSETS", "MemoryPieces", "PieceWriter", "Rows", "assemble"]

#: ``{layer key: rows}``: a tensor ``(n, *shape)`` or per-token :class:`Ragged` rows
Rows = dict[str, "torch.Tensor | Ragged"]

#: The name of a per-token layer's offsets tensor in the features file.
OFFSETS = "{key}/offsets"
_CHUNK = 64 << 20


def _pieces(output: Output) -> Path:
    return output.work / "pieces"


def _marker(output: Output, shard: int) -> Path:
    return output.shards / f"{shard:06d}.json"


@dataclass
class _Open:
    """A shard being written: its files, keys, and each layer's row shape and dtype."""

    folder: Path
    keys: list[str]
    layers: dict[str, dict[str, Any]]
    targets: list[int] | None
    skipped: list[dict[str, Any]]


class PieceWriter:
    """Appends rows to their shard's piece; commits a shard once its last batch is written."""

    def __init__(self, output: Output, keys: list[str]) -> None:
        self.output, self.keys = output, keys
        self.open: dict[int, _Open] = {}

    def write(
        self, shard: int, keys: list[str], rows: Rows, targets: list[int] | None = None
    ) -> None:
        piece = self._piece(shard)
        piece.keys += keys
        if targets is None:
            piece.targets = None
        elif piece.targets is not None:
            piece.targets += targets
        for j, key in enumerate(self.keys):
            value = rows[key]
            ragged = isinstance(value, Ragged)
            data = value.values if isinstance(value, Ragged) else value
            entry = {
                "shape": list(data.shape[1:]),
                "dtype": DTYPES.get(data.dtype, str(data.dtype)),
                "ragged": ragged,
            }
            known = piece.layers.setdefault(key, entry)
            if known != entry:
                raise DataError(
                    f"Layer {key!r} gives rows of {entry} for sample {keys[0]!r} but {known} "
                    "before: every sample must give one shape. Pool the layer (pool='avg') or "
                    "make the inputs one size."
                )
            _append(piece.folder / f"{j}.bin", data)
            if isinstance(value, Ragged):
                _append(piece.folder / f"{j}.len", value.lengths)

    def skip(self, shard: int, skipped: list[dict[str, Any]]) -> None:
        self._piece(shard).skipped += skipped

    def discard(self, shard: int) -> None:
        """Drop the rows written for ``shard`` (an unreadable shard left out whole)."""
        piece = self._piece(shard)
        shutil.rmtree(piece.folder)
        piece.folder.mkdir(parents=True)
        piece.keys, piece.layers, piece.targets = [], {}, []

    def commit(self, shard: int, name: str, identity: dict[str, Any] | None) -> None:
        """Flush the piece and write its marker: the shard is done."""
        piece = self._piece(shard)
        for file in piece.folder.iterdir():
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
        marker = {
            "shard": shard,
            "name": name,
            "identity": identity,
            "rows": len(piece.keys),
            "keys": piece.keys,
            "targets": piece.targets,
            "layers": piece.layers,
            "skipped": piece.skipped,
        }
        write_atomic(_marker(self.output, shard), _dump(marker))
        del self.open[shard]

    def _piece(self, shard: int) -> _Open:
        if shard not in self.open:
            folder = _pieces(self.output) / f"{shard:06d}"
            if folder.exists():
                shutil.rmtree(folder)  # rows of a shard that was never committed
            folder.mkdir(parents=True)
            self.open[shard] = _Open(folder, [], {}, [], [])
        return self.open[shard]


def _append(path: Path, value: torch.Tensor) -> None:
    data = value.contiguous().reshape(-1).view(torch.uint8).numpy()
    with open(path, "ab") as f:
        f.write(data.data)


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode()


def done_shards(output: Output) -> dict[int, dict[str, Any]]:
    """The committed shards' markers, by shard."""
    if not output.shards.is_dir():
        return {}
    return {int(m.stem): json.loads(m.read_text()) for m in output.shards.glob("*.json")}


class MemoryPieces:
    """The same interface, keeping each shard's rows in memory (``out=None``)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.rows: dict[int, list[Rows]] = {}
        self.markers: dict[int, dict[str, Any]] = {}

    def write(
        self, shard: int, keys: list[str], rows: Rows, targets: list[int] | None = None
    ) -> None:
        self.rows.setdefault(shard, []).append(rows)
        marker = self.markers.setdefault(shard, {"keys": [], "targets": [], "skipped": []})
        marker["keys"] += keys
        marker["targets"] = (
            None if targets is None or marker["targets"] is None else [*marker["targets"], *targets]
        )

    def skip(self, shard: int, skipped: list[dict[str, Any]]) -> None:
        self.markers.setdefault(shard, {"keys": [], "targets": [], "skipped": []})
        self.markers[shard]["skipped"] += skipped

    def discard(self, shard: int) -> None:
        self.rows.pop(shard, None)
        self.markers.setdefault(shard, {"keys": [], "targets": [], "skipped": []})
        self.markers[shard].update(keys=[], targets=[])

    def commit(self, shard: int, name: str, identity: dict[str, Any] | None) -> None:
        self.markers.setdefault(shard, {"keys": [], "targets": [], "skipped": []})

    def tensors(self, n_shards: int) -> dict[str, torch.Tensor]:
        """Each layer's rows in shard order (a per-token layer as a jagged nested tensor)."""
        from featwrap.extraction.tokens import jagged

        batches = [rows for k in range(n_shards) for rows in self.rows.get(k, [])]
        result: dict[str, torch.Tensor] = {}
        for key in self.keys:
            values = [b[key] for b in batches]
            _check_same([_describe(v) for v in values], key)
            if values and isinstance(values[0], Ragged):
                ragged = [v for v in values if isinstance(v, Ragged)]
                lengths = torch.cat([v.lengths for v in ragged])
                offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
                result[key] = jagged(torch.cat([v.values for v in ragged]), offsets)
            else:
                result[key] = torch.cat([v for v in values if isinstance(v, torch.Tensor)])
        return result


def _describe(value: torch.Tensor | Ragged) -> tuple[Any, ...]:
    data = value.values if isinstance(value, Ragged) else value
    return (tuple(data.shape[1:]), data.dtype, isinstance(value, Ragged))


def _check_same(described: list[Any], key: str) -> None:
    for d in described[1:]:
        if d != described[0]:
            raise DataError(
                f"Layer {key!r} gives rows of shape {d[0]} ({d[1]}) but {described[0][0]} "
                f"({described[0][1]}) before: every sample must give one shape. Pool the layer "
                "(pool='avg') or make the inputs one size."
            )


def assemble(output: Output, keys: list[str], shards: list[int]) -> dict[str, Any]:
    """Concatenate the committed pieces of ``shards`` into ``features.safetensors``, in that
    order (rank 0, once all are in).

    Returns ``{"ids", "targets", "skipped", "layers": {key: entry}, "shards"}`` for the manifest.
    """
    markers = done_shards(output)
    missing = [k for k in shards if k not in markers]
    if missing:
        raise OutputError(
            f"{len(missing)} shards of {str(output.root)!r} were not written (first: "
            f"{missing[0]}); run the same extraction again to finish them."
        )
    ordered = [markers[k] for k in shards]
    full = [m for m in ordered if m["rows"]]
    if not full:
        raise DataError("No sample could be read: every shard was empty or unreadable.")
    rows = sum(m["rows"] for m in ordered)
    tensors: list[tuple[str, tuple[int, ...], torch.dtype, list[Path]]] = []
    offsets: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, Any]] = {}
    for j, key in enumerate(keys):
        entry = full[0]["layers"][key]
        _check_same([_entry(m["layers"][key]) for m in full], key)
        dtype = dtype_from_name(entry["dtype"])
        files = [_pieces(output) / f"{m['shard']:06d}" / f"{j}.bin" for m in full]
        if entry["ragged"]:
            lengths = torch.cat([_read_lengths(f.with_suffix(".len")) for f in files])
            offsets[key] = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
            tokens = int(offsets[key][-1])
            tensors.append((key, (tokens, *entry["shape"]), dtype, files))
            layers[key] = {"shape": [rows, None, *entry["shape"]], "tokens": tokens}
            layers[key]["offsets"] = OFFSETS.format(key=key)
        else:
            tensors.append((key, (rows, *entry["shape"]), dtype, files))
            layers[key] = {"shape": [rows, *entry["shape"]]}
        layers[key]["dtype"] = dtype_name(dtype)
    _write_file(output, tensors, offsets)
    return {
        "ids": [k for m in ordered for k in m["keys"]],
        "targets": None
        if any(m["targets"] is None for m in full)
        else [t for m in ordered for t in (m["targets"] or [])],
        "skipped": [s for m in ordered for s in m["skipped"]],
        "layers": layers,
        "shards": [
            {"name": m["name"], "rows": m["rows"], "identity": m["identity"]} for m in ordered
        ],
    }


def _entry(entry: dict[str, Any]) -> tuple[Any, ...]:
    return (tuple(entry["shape"]), entry["dtype"], entry["ragged"])


def _read_lengths(path: Path) -> torch.Tensor:
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.int64)


def _write_file(
    output: Output,
    tensors: list[tuple[str, tuple[int, ...], torch.dtype, list[Path]]],
    offsets: dict[str, torch.Tensor],
) -> None:
    """A safetensors file: the header, then each tensor's bytes (largest item size first, so
    that every tensor starts aligned for its dtype), copied from the pieces in order."""
    items: list[tuple[str, tuple[int, ...], torch.dtype, list[Path] | torch.Tensor]] = [
        (k, s, d, f) for k, s, d, f in tensors
    ]
    items += [(OFFSETS.format(key=k), tuple(v.shape), v.dtype, v) for k, v in offsets.items()]
    items.sort(key=lambda item: -item[2].itemsize)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    position = 0
    for key, shape, dtype, _ in items:
        n = dtype.itemsize
        for d in shape:
            n *= d
        header[key] = {"dtype": DTYPES[dtype], "shape": list(shape)}
        header[key]["data_offsets"] = [position, position + n]
        position += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    tmp = output.features.with_name(output.features.name + ".tmp")
    with open(tmp, "wb") as dst:
        dst.write(struct.pack("<Q", len(text)) + text)
        for key, _, _, source in items:
            if isinstance(source, torch.Tensor):
                dst.write(source.contiguous().view(torch.uint8).numpy().data)
                continue
            for file in source:
                with open(file, "rb") as src:
                    shutil.copyfileobj(src, dst, _CHUNK)
            if dst.tell() != len(text) + 8 + header[key]["data_offsets"][1]:
                raise OutputError(
                    f"The pieces of layer {key!r} are shorter than their markers say."
                )
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, output.features)
