"""Reading extracted features back: :func:`load_features` and the :class:`Features` it returns."""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from featwrap._text import dtype_name, table
from featwrap.extraction.errors import DataError
from featwrap.extraction.safetensors_file import dtype_from_name, read_header
from featwrap.extraction.store import FEATURES_FILE, MANIFEST_FILE, Output, read_record
from featwrap.extraction.tokens import jagged

__all__ = ["Features", "layer_statistics", "load_features"]


class Features(Mapping[str, torch.Tensor]):
    """Extracted features: ``{layer: tensor}`` with one row per sample, in dataset order.

    Attributes:
        ids: one id per row (the image's path relative to the data folder, else the dataset
            index as a string).
        skipped: ``{"index", "id", "error"}`` of each unreadable sample left out
            (``on_error="skip"``).
        manifest: everything recorded about the run (model, weights, layers, transform...);
            empty for features kept in memory.
        path: the directory they were read from, or ``None``.
    """

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        ids: Sequence[str],
        skipped: Sequence[dict[str, Any]] = (),
        manifest: dict[str, Any] | None = None,
        path: Path | None = None,
    ) -> None:
        self._tensors = tensors
        self.ids = list(ids)
        self.skipped = list(skipped)
        self.manifest = manifest or {}
        self.path = path

    @property
    def targets(self) -> list[int] | None:
        """The class index of each row, when the data had classes (a folder with one subfolder
        per class, or torchvision's ``ImageFolder``/``DatasetFolder``); else ``None``."""
        targets = self.manifest.get("targets")
        return None if targets is None else list(targets)

    @property
    def classes(self) -> list[str] | None:
        """The class names that ``targets`` index, when the data had them; else ``None``."""
        classes = self.manifest.get("classes")
        return None if classes is None else list(classes)

    def __getitem__(self, key: str) -> torch.Tensor:
        try:
            return self._tensors[key]
        except KeyError:
            raise KeyError(
                f"{key!r} is not an extracted layer; the layers are {list(self)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        layers = ", ".join(f"{k}: {tuple(v.shape)} {dtype_name(v.dtype)}" for k, v in self.items())
        where = f", path={str(self.path)!r}" if self.path else ""
        return f"Features({len(self.ids)} rows; {layers}{where})"

    def summary(self, max_rows: int = 1024) -> str:
        """A table of each layer's shape, dtype, mean and std (over at most ``max_rows`` evenly
        spaced rows, so that it is quick whatever the size)."""
        header = ("layer", "shape", "dtype", "mean", "std")
        rows = [header]
        for key, stats in layer_statistics(self, max_rows).items():
            rows.append(
                (
                    key,
                    str(tuple(self[key].shape)),
                    dtype_name(self[key].dtype),
                    f"{stats['mean']:.4g}",
                    f"{stats['std']:.4g}",
                )
            )
        lines = table(rows)
        n = len(next(iter(self.values()))) if self else 0
        if n > max_rows:
            lines.append(f"(mean and std over {max_rows} of the {n} rows, evenly spaced)")
        return "\n".join(lines)


def load_features(path: str | os.PathLike[str], layers: Sequence[str] | None = None) -> Features:
    """The features an extraction wrote to ``path``, each layer one memory-mapped tensor.

    Nothing is read until it is used: the file is mapped copy-on-write, so indexing rows reads only
    those rows from disk, and writing into a tensor never changes the file.

    Args:
        path: the output directory of :func:`featwrap.extract` (``out=``) or ``featwrap extract``.
        layers: the layer keys to load (default: all).

    Raises:
        DataError: ``path`` holds no finished extraction (or an unfinished one: run it again).
    """
    root = Path(path)
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        output = Output(root)
        if output.run_json.is_file():
            done = len(list(output.shards.glob("*.json")))
            raise DataError(
                f"{str(root)!r} holds an unfinished extraction ({done} shards written): run the "
                "same extraction again to finish it, then load it."
            )
        raise DataError(
            f"{str(root)!r} holds no extracted features (no {MANIFEST_FILE}). Pass the output "
            "directory of featwrap.extract(..., out=DIR) or `featwrap extract --out DIR`."
        )
    manifest = read_record(manifest_path)
    file = root / str(manifest.get("file", FEATURES_FILE))
    tensors = _map_tensors(file)
    wanted = list(manifest.get("layers", tensors)) if layers is None else list(layers)
    for key in wanted:
        if key not in tensors:
            raise DataError(f"{key!r} is not a layer of {str(root)!r}; it holds {list(tensors)}.")
        offsets = manifest.get("layers", {}).get(key, {}).get("offsets")
        if offsets is not None:  # per-token rows: the tokens, cut per sample by the offsets
            tensors[key] = jagged(tensors[key], tensors[offsets])
    return Features(
        {k: tensors[k] for k in wanted},
        manifest.get("ids", []),
        manifest.get("skipped", []),
        manifest,
        root,
    )


def _map_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            (n,) = struct.unpack("<Q", head)
            start, header = read_header(head + f.read(n))
    except (OSError, ValueError, struct.error) as error:
        raise DataError(
            f"{str(file)!r} is not a readable safetensors file ({error}). Run the extraction "
            "again with overwrite=True (--overwrite) to compute it anew."
        ) from error
    raw = torch.from_file(str(file), shared=False, size=size, dtype=torch.uint8) if size else None
    tensors: dict[str, torch.Tensor] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        dtype = dtype_from_name(entry["dtype"])
        shape = tuple(entry["shape"])
        a, b = entry["data_offsets"]
        if raw is None or a == b:
            tensors[key] = torch.empty(shape, dtype=dtype)
            continue
        chunk = raw[start + a : start + b]
        if (start + a) % dtype.itemsize:  # not our writer's alignment: a copy, then
            chunk = chunk.clone()
        tensors[key] = chunk.view(dtype).view(shape)
    return tensors


def layer_statistics(
    features: Mapping[str, torch.Tensor], max_rows: int | None = None
) -> dict[str, dict[str, float]]:
    """``{layer: {"mean", "std", "min", "max", "zeros", "p01", "p25", "p50", "p75", "p99"}}`` over
    the rows (batch-first tensors).

    ``zeros`` is the fraction of exact zeros; ``pNN`` the NN-th percentile (nearest rank), exact up
    to 65,536 values, beyond that measured on evenly spaced values (at most about a million).
    Computed in float64, a chunk of rows at a time, so memory stays bounded; with ``max_rows``,
    over that many evenly spaced rows only.
    """
    stats: dict[str, dict[str, float]] = {}
    for key, tensor in features.items():
        acc = _Moments()
        x = tensor.detach()
        if x.is_nested:  # per-token rows: statistics over every token
            x = x.values()
        if x.ndim == 0:
            x = x.reshape(1)
        n = len(x)
        step = max(1, (16 << 20) // max(1, x[0].numel())) if n else 1
        if max_rows is not None and n > max_rows:
            rows = torch.linspace(0, n - 1, max_rows).round().long()
            chunks = (x[rows[i : i + step]] for i in range(0, max_rows, step))
        else:
            chunks = (x[i : i + step] for i in range(0, n, step))
        for chunk in chunks:
            acc.add(chunk.double().reshape(-1))
        stats[key] = acc.result()
    return stats


#: The percentiles of layer_statistics, and the values kept per chunk to measure them.
PERCENTILES = (1, 25, 50, 75, 99)
_SAMPLE = 1 << 16


class _Moments:
    """Count, mean, M2 (Chan et al.'s parallel update), min, max, zeros and a sample of a stream."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.low, self.high, self.zeros = math.inf, -math.inf, 0
        self.sample: list[torch.Tensor] = []

    def add(self, x: torch.Tensor) -> None:
        k = x.numel()
        if not k:
            return
        mean = x.mean().item()
        m2 = ((x - mean) ** 2).sum().item()
        delta, total = mean - self.mean, self.n + k
        self.mean += delta * k / total
        self.m2 += m2 + delta * delta * self.n * k / total
        self.n = total
        self.low, self.high = min(self.low, x.min().item()), max(self.high, x.max().item())
        self.zeros += int((x == 0).sum().item())
        self.sample.append(x[:: -(-k // _SAMPLE)].clone())  # evenly spaced; not a view
        if sum(len(t) for t in self.sample) > 16 * _SAMPLE:  # bounded memory: thin it out
            self.sample = [torch.cat(self.sample)[::2]]

    def result(self) -> dict[str, float]:
        n = self.n
        values = torch.cat(self.sample).sort().values if self.sample else torch.empty(0)
        ranks = {f"p{p:02d}": round(p / 100 * (len(values) - 1)) for p in PERCENTILES}
        return {
            "mean": self.mean if n else math.nan,
            "std": math.sqrt(self.m2 / (n - 1)) if n > 1 else math.nan,
            "min": self.low if n else math.nan,
            "max": self.high if n else math.nan,
            "zeros": self.zeros / n if n else math.nan,
        } | {key: values[i].item() if n else math.nan for key, i in ranks.items()}
