"""featwrap: intermediate activations from any PyTorch model, in one correct line.

Every public name is importable from here. Each is loaded from its module on first use, so that
``import featwrap`` (and ``featwrap --help``) does not pay for torch until something needs it.

>>> from featwrap import FeatureModel
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from featwrap._version import __version__

if TYPE_CHECKING:  # the same names, for type checkers and editors
    from featwrap._options import Missing, OnError, Pooling, Repeats
    from featwrap.edit import Edit, EditValue
    from featwrap.errors import (
        BackboneError,
        CheckpointWarning,
        EditError,
        FeatwrapError,
        FeatwrapTypeError,
        FeatwrapValueError,
        GradientWarning,
        HooksRemovedError,
        LayerNotFoundError,
        LayerSpecError,
        MissingFeatureError,
        PrunedModuleError,
        RepeatedCallError,
    )
    from featwrap.extraction import (
        DataError,
        Features,
        OutputError,
        ResumeMismatchError,
        extract,
        load_features,
    )
    from featwrap.hub import LoadedModel, UnknownModelError, WeightsUnavailableError, load_model
    from featwrap.info import DryRunWarning, FeatureInfo, FeatureMeta
    from featwrap.layer_summary import LayerRow, LayerSummary, summary
    from featwrap.layers import Capture, LayerSpec, list_layers
    from featwrap.maps import Tokens
    from featwrap.model import FeatureModel, feature_info
    from featwrap.multiscale import stages
    from featwrap.training import UnusedModulesWarning, parameters_by_key

#: Where each public name lives (a new public name goes here, in ``__all__``, in the
#: ``TYPE_CHECKING`` block above and in docs/api.md; tests/test_structure.py checks all four).
_HOMES: dict[str, str] = {
    **dict.fromkeys(("Missing", "OnError", "Pooling", "Repeats"), "featwrap._options"),
    **dict.fromkeys(
        (
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
            "MissingFeatureError",
            "PrunedModuleError",
            "RepeatedCallError",
        ),
        "featwrap.errors",
    ),
    **dict.fromkeys(
        (
            "DataError",
            "Features",
            "OutputError",
            "ResumeMismatchError",
            "extract",
            "load_features",
        ),
        "featwrap.extraction",
    ),
    **dict.fromkeys(
        ("LoadedModel", "UnknownModelError", "WeightsUnavailableError", "load_model"),
        "featwrap.hub",
    ),
    **dict.fromkeys(("DryRunWarning", "FeatureInfo", "FeatureMeta"), "featwrap.info"),
    **dict.fromkeys(("LayerRow", "LayerSummary", "summary"), "featwrap.layer_summary"),
    **dict.fromkeys(("Capture", "LayerSpec", "list_layers"), "featwrap.layers"),
    **dict.fromkeys(("FeatureModel", "feature_info"), "featwrap.model"),
    "stages": "featwrap.multiscale",
    "Tokens": "featwrap.maps",
    **dict.fromkeys(("UnusedModulesWarning", "parameters_by_key"), "featwrap.training"),
    **dict.fromkeys(("Edit", "EditValue"), "featwrap.edit"),
}

__all__ = [
    "BackboneError",
    "Capture",
    "CheckpointWarning",
    "DataError",
    "DryRunWarning",
    "Edit",
    "EditError",
    "EditValue",
    "FeatureInfo",
    "FeatureMeta",
    "FeatureModel",
    "Features",
    "FeatwrapError",
    "FeatwrapTypeError",
    "FeatwrapValueError",
    "GradientWarning",
    "HooksRemovedError",
    "LayerNotFoundError",
    "LayerRow",
    "LayerSpec",
    "LayerSpecError",
    "LayerSummary",
    "LoadedModel",
    "Missing",
    "MissingFeatureError",
    "OnError",
    "OutputError",
    "Pooling",
    "PrunedModuleError",
    "RepeatedCallError",
    "Repeats",
    "ResumeMismatchError",
    "Tokens",
    "UnknownModelError",
    "UnusedModulesWarning",
    "WeightsUnavailableError",
    "__version__",
    "extract",
    "feature_info",
    "list_layers",
    "load_features",
    "load_model",
    "parameters_by_key",
    "stages",
    "summary",
]


def __getattr__(name: str) -> Any:
    """Load a public name (or a submodule, as ``import featwrap.x`` would) on first use."""
    home = _HOMES.get(name)
    if home is None:
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
