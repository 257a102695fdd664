"""Text helpers used across featwrap: aligned tables, "Did you mean" hints, dtype names.

>>> print("\\n".join(table([("key", "shape"), ("layer1", "(64, 56, 56)")])))
key     shape
layer1  (64, 56, 56)
>>> did_you_mean("layr1", ["layer1", "layer2", "fc"], n=2)
" Did you mean 'layer1'? (Also close: 'layer2'.)"
>>> import torch
>>> dtype_name(torch.bfloat16)
'bfloat16'
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["did_you_mean", "dtype_name", "quoted", "suggest", "table"]


def table(rows: Iterable[Sequence[str]], *, indent: str = "") -> list[str]:
    """Lines of ``rows`` (the first is the header) in left-aligned columns two spaces apart,
    without trailing spaces."""
    rows = [tuple(row) for row in rows]
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        (indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))).rstrip()
        for row in rows
    ]


def did_you_mean(value: Any, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> str:
    """``" Did you mean 'x'?"`` for the closest of ``choices`` (with up to ``n - 1`` more as
    "Also close"), or ``""`` when none is close: the hint that ends an error message."""
    return suggest(difflib.get_close_matches(str(value), list(choices), n=n, cutoff=cutoff))


def suggest(close: Sequence[str]) -> str:
    """The hint for candidates already chosen, best first: ``" Did you mean 'a'? (Also close:
    'b' and 'c'.)"``, or ``""`` for none."""
    if not close:
        return ""
    hint = f" Did you mean {close[0]!r}?"
    if len(close) > 1:
        hint += f" (Also close: {quoted(close[1:], last='and')}.)"
    return hint


def quoted(items: Iterable[Any], *, last: str = ",") -> str:
    """``'a', 'b', 'c'`` (``last="and"``: ``'a', 'b' and 'c'``; ``"or"`` likewise)."""
    parts = [repr(i) for i in items]
    if last == "," or len(parts) < 2:
        return ", ".join(parts)
    return ", ".join(parts[:-1]) + f" {last} " + parts[-1]


def dtype_name(dtype: Any) -> str:
    """``torch.float16`` -> ``"float16"`` (also for a dtype already given as a name)."""
    return str(dtype).removeprefix("torch.")
