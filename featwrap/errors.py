"""The featwrap exception family.

Every error featwrap raises derives from :class:`FeatwrapError` and from the builtin exception that
users already catch for that kind of mistake (``ValueError`` for a bad argument, ``TypeError`` for a
wrong type, ``RuntimeError`` for something that went wrong during a forward).
"""

from __future__ import annotations

import builtins

__all__ = [
    "BackboneError",
    "CheckpointWarning",
    "EditError",
    "FeatwrapError",
    "FeatwrapTypeError",
    "FeatwrapValueError",
    "GradientWarning",
    "HooksRemovedError",
    "LayerNotFoundError",
    "LayerSpecError",
    "MissingDependencyError",
    "MissingFeatureError",
    "PrunedModuleError",
    "RepeatedCallError",
    "UnknownModelError",
    "WeightsUnavailableError",
]


class FeatwrapError(Exception):
    """Base class of every error raised by featwrap."""


class FeatwrapValueError(FeatwrapError, ValueError):
    """An argument has a valid type but a bad value."""


class FeatwrapTypeError(FeatwrapError, TypeError):
    """An argument has the wrong type."""


class LayerNotFoundError(FeatwrapValueError):
    """A requested layer path (or glob) names no submodule of the model."""


class LayerSpecError(FeatwrapValueError):
    """The ``layers`` argument is malformed: empty, duplicated keys, an alias clash."""


class MissingFeatureError(FeatwrapError, RuntimeError):
    """A requested layer did not run during a forward (with ``missing="error"``)."""


class RepeatedCallError(FeatwrapError, RuntimeError):
    """A requested layer ran more than once in one forward (with ``repeats="error"``)."""


class HooksRemovedError(FeatwrapError, RuntimeError):
    """A FeatureModel was called after its hooks were removed."""


class EditError(FeatwrapError, ValueError):
    """An edit (``FeatureModel.edit``) that cannot apply: an unknown key, a replacement tensor
    of the wrong shape, a structure that a selector cannot write into."""


class GradientWarning(UserWarning):
    """The gradient *at* a captured value is not available (its value is exact): it is not a node
    on the path to the model's output (a ``torch.compile``'d forward, a reentrant checkpoint)."""


class CheckpointWarning(GradientWarning):
    """A captured value has no autograd graph: its layer ran under a reentrant checkpoint."""


class PrunedModuleError(FeatwrapError, RuntimeError):
    """A module that ``FeatureModel.prune()`` took out of the backbone was called."""


class UnknownModelError(FeatwrapValueError):
    """A model name that no registry knows."""


class WeightsUnavailableError(FeatwrapError, RuntimeError):
    """Pretrained weights were asked for but are neither cached nor downloadable."""


class MissingDependencyError(FeatwrapError, ImportError):
    """An optional dependency is not installed (``transformers`` for ``hf:`` model names)."""


class BackboneError(FeatwrapError):
    """The backbone's own forward raised.

    The exception featwrap raises is a subclass of both ``BackboneError`` and the original
    exception's type (when that type allows it), so ``except ValueError`` around a call still
    catches a ``ValueError`` from inside the model. The original exception is chained as
    ``__cause__``; :attr:`fired` lists the requested layers that had produced a value.
    """

    fired: tuple[str, ...] = ()
    original: BaseException | None = None


_BACKBONE_CLASSES: dict[type[BaseException], type[BackboneError]] = {}


def backbone_error_class(error_type: type[Exception]) -> type[BackboneError]:
    """The subclass of both BackboneError and ``error_type`` used to re-raise a backbone failure.

    ``except ValueError`` around a FeatureModel call keeps catching a ValueError raised in the
    model. Falls back to a RuntimeError flavour for exception types that cannot be mixed in.
    """
    cls = _BACKBONE_CLASSES.get(error_type)
    if cls is None:
        if issubclass(error_type, BackboneError):
            return error_type
        name = "Backbone" + error_type.__name__
        try:
            cls = type(name, (BackboneError, error_type), {"__str__": Exception.__str__})
        except TypeError:  # an exception type that cannot be subclassed or mixed in
            cls = backbone_error_class(RuntimeError)
        cls.__module__ = __name__
        _BACKBONE_CLASSES[error_type] = cls
        if getattr(builtins, error_type.__name__, None) is error_type:
            globals().setdefault(name, cls)  # picklable by name for builtin exception types
    return cls


def __getattr__(name: str) -> type[BackboneError]:
    """Create ``BackboneValueError`` and friends on demand (so that unpickling finds them)."""
    builtin = (
        getattr(builtins, name.removeprefix("Backbone"), None)
        if name.startswith("Backbone")
        else None
    )
    if isinstance(builtin, type) and issubclass(builtin, Exception):
        return backbone_error_class(builtin)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
