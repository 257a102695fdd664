"""What a run's samples were: one key per sample, so that a resume notices changed data.

A run records, besides its arguments, the id and a cheap *content key* of every sample:

- a file (an image folder, torchvision's ``ImageFolder``/``DatasetFolder``): its size and
  modification time (``"1234:1700000000123456789"``), read with one ``stat`` per file;
- a row of a ``TensorDataset``: a hash of its tensors' bytes (the data is in memory already).

A resume compares them with the data as it is now: the shards holding changed samples are
computed again (and the samples named), added or removed samples are named in the refusal.
Any other Dataset gets a *fingerprint* instead: the content hashes of up to
:data:`FINGERPRINT_SAMPLES` evenly spaced samples, read once at the start; a different one means
other contents (the resume is refused, naming the samples that differ). A change to a sample
outside the fingerprint is not seen: give such a dataset a ``samples`` list of files, or start
over with ``overwrite=True``, when its contents may change between runs.

Keys are per sample, so a stream of samples (no length known up front) can record them per shard.

>>> sample_ids_change(["a.png", "b.png", "c.png"], ["a.png", "c.png", "d.png"])
"1 added ('d.png'); 1 removed ('b.png')"
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from featwrap.extraction.data import Source, stable_repr

__all__ = [
    "FINGERPRINT_SAMPLES",
    "Identity",
    "changed_samples",
    "content_digest",
    "fingerprint",
    "identify",
    "sample_ids_change",
]

#: Samples read for the fingerprint of a Dataset that has no cheaper key per sample.
FINGERPRINT_SAMPLES = 16

#: ``{"keys": [one key per sample] | None, "fingerprint": {index: hash} | None}``
Identity = dict[str, Any]


def identify(source: Source) -> Identity:
    """The content keys of ``source``'s samples, or a fingerprint when they cannot be had."""
    keys = _file_keys(source.dataset)
    if keys is None and isinstance(source.dataset, TensorDataset):
        keys = _row_keys(source.dataset)
    if keys is not None:
        return {"keys": keys, "fingerprint": None}
    return {"keys": None, "fingerprint": fingerprint(source.dataset, len(source.ids))}


def fingerprint(dataset: Any, n: int) -> dict[str, str]:
    """``{index: content hash}`` of up to :data:`FINGERPRINT_SAMPLES` evenly spaced samples of
    the ``n`` samples of a map-style ``dataset``."""
    k = FINGERPRINT_SAMPLES
    picked = range(n) if n <= k else sorted({i * (n - 1) // (k - 1) for i in range(k)})
    return {str(i): _sample_hash(dataset, i) for i in picked}


def content_digest(identity: Identity) -> str:
    """One hash of everything ``identity`` holds (recorded in the manifest of a finished run)."""
    digest = hashlib.sha256()
    for key in identity.get("keys") or []:
        digest.update(f"{key}\n".encode())
    for index, value in sorted(
        (identity.get("fingerprint") or {}).items(), key=lambda kv: int(kv[0])
    ):
        digest.update(f"{index}={value}\n".encode())
    return digest.hexdigest()


def changed_samples(before: Identity, now: Identity) -> list[int]:
    """The indices whose key (or fingerprint hash) differs; the samples are the same ones."""
    if before.get("keys") is not None and now.get("keys") is not None:
        return [
            i for i, (a, b) in enumerate(zip(before["keys"], now["keys"], strict=True)) if a != b
        ]
    old, new = before.get("fingerprint") or {}, now.get("fingerprint") or {}
    if not old and not new and before.get("keys") != now.get("keys"):
        return list(range(len(before.get("keys") or now.get("keys") or [])))
    return sorted(int(i) for i in set(old) | set(new) if old.get(i) != new.get(i))


def sample_ids_change(before: Sequence[str], now: Sequence[str], shown: int = 3) -> str:
    """Which ids were added or removed (or, for the same ids, that their order changed)."""
    old, new = set(before), set(now)
    added = [i for i in now if i not in old]
    removed = [i for i in before if i not in new]
    parts = []
    if added:
        parts.append(f"{len(added)} added ({_names(added, shown)})")
    if removed:
        parts.append(f"{len(removed)} removed ({_names(removed, shown)})")
    return "; ".join(parts) or "the same samples in another order"


def _names(ids: Sequence[str], shown: int) -> str:
    more = f", and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(repr(i) for i in ids[:shown]) + more


def _file_keys(dataset: Any) -> list[str] | None:
    """Size and mtime of each file of a featwrap image folder or a torchvision DatasetFolder."""
    paths = getattr(dataset, "paths", None)
    if paths is None:
        samples = getattr(dataset, "samples", None)
        if not isinstance(samples, Sequence) or len(samples) != len(dataset):
            return None
        try:
            paths = [s[0] for s in samples]
        except (TypeError, IndexError, KeyError):
            return None
    if not all(isinstance(p, (str, os.PathLike)) for p in paths):
        return None
    keys = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            keys.append("missing")  # read (and reported) as unreadable when its turn comes
            continue
        keys.append(f"{stat.st_size}:{stat.st_mtime_ns}")
    return keys


def _row_keys(dataset: TensorDataset) -> list[str]:
    """A hash of each row's bytes (across the dataset's tensors), read in place."""
    n = len(dataset)
    digests = [hashlib.blake2b(digest_size=16) for _ in range(n)]
    for t in dataset.tensors:
        raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        data, width = raw.data, raw.size // max(1, n)
        for i, digest in enumerate(digests):
            digest.update(data[i * width : (i + 1) * width])
    return [d.hexdigest() for d in digests]


def _sample_hash(dataset: Any, index: int) -> str:
    digest = hashlib.sha256()
    try:
        sample = dataset[index]
    except Exception as error:  # an unreadable sample: its error is its content
        digest.update(f"unreadable: {type(error).__name__}: {error}".encode())
    else:
        _hash_into(digest, sample)
    return digest.hexdigest()[:32]


def _hash_into(digest: Any, obj: Any) -> None:
    """Hash a sample's content: tensors, arrays and images by their bytes, containers by item."""
    if isinstance(obj, torch.Tensor):
        digest.update(f"tensor {obj.dtype} {tuple(obj.shape)}|".encode())
        digest.update(_tensor_bytes(obj))
    elif isinstance(obj, np.ndarray):
        digest.update(f"array {obj.dtype} {obj.shape}|".encode())
        digest.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, Mapping):
        for key in sorted(obj, key=str):
            digest.update(f"{key!s}:".encode())
            _hash_into(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"{type(obj).__name__}{len(obj)}[".encode())
        for item in obj:
            _hash_into(digest, item)
    elif isinstance(obj, (bytes, bytearray)):
        digest.update(bytes(obj))
    elif hasattr(obj, "tobytes") and hasattr(obj, "mode"):  # a PIL image
        digest.update(f"image {obj.mode} {obj.size}|".encode())
        digest.update(obj.tobytes())
    elif isinstance(obj, Path):
        digest.update(os.fspath(obj).encode(errors="surrogateescape"))
    else:
        digest.update(stable_repr(obj).encode(errors="backslashreplace"))


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return bytes(flat.view(torch.uint8).numpy().data) if flat.numel() else b""
