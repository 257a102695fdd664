"""Every option that takes one of a few words: string enums, parsed in one place.

Each option is an :class:`Option` (a ``str`` enum): users pass the plain string (``"last"``) or the
member (``Repeats.LAST``), and :meth:`Option.parse` turns either into the member, or raises a
:class:`~featwrap.FeatwrapValueError` that names the bad value, the choices and a close match.

>>> Repeats.parse("first", "repeats")
<Repeats.FIRST: 'first'>
>>> Pooling.AVG == "avg"
True
"""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

from featwrap._text import did_you_mean, quoted
from featwrap.errors import FeatwrapValueError

__all__ = ["OUTPUT_KEY", "Missing", "OnError", "Option", "Pooling", "Repeats"]

#: The key of the backbone's own output in a FeatureModel's result (and in an extraction).
OUTPUT_KEY = "logits"

_O = TypeVar("_O", bound="Option")


class Option(str, Enum):
    """Base of featwrap's options: a string enum whose members equal their plain strings."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        """The plain strings, in definition order (for messages and the command line)."""
        return tuple(m.value for m in cls)

    @classmethod
    def parse(cls: type[_O], value: Any, name: str) -> _O:
        """The member for ``value`` (a member or its string), or an error naming ``name``."""
        try:
            return cls(value)
        except ValueError:
            hint = did_you_mean(value, cls.choices()) if isinstance(value, str) else ""
            raise FeatwrapValueError(
                f"{name}={value!r} is not one of {quoted(cls.choices())}.{hint}"
            ) from None


class Repeats(Option):
    """What a FeatureModel returns for a layer that runs several times in one forward."""

    LAST = "last"
    FIRST = "first"
    ALL = "all"
    ERROR = "error"


class Missing(Option):
    """What a FeatureModel does with a requested layer that did not run in a forward."""

    ERROR = "error"
    SKIP = "skip"
    NONE = "none"


class Pooling(Option):
    """How :func:`featwrap.extract` pools a layer's features before storing them.

    ``avg`` and ``max`` reduce every dimension after the channel one (NCHW, NCL, NCDHW layouts)
    and leave 2-D outputs as they are; ``flatten`` keeps one vector per sample; ``first`` and
    ``last`` take the first or last position of dim 1 (a ViT's class token). Token features
    ``(N, L, D)`` with an attention mask are pooled over the real tokens only.
    """

    NONE = "none"
    AVG = "avg"
    MAX = "max"
    FLATTEN = "flatten"
    FIRST = "first"
    LAST = "last"


class OnError(Option):
    """What :func:`featwrap.extract` does with a sample it cannot read."""

    FAIL = "fail"
    SKIP = "skip"
