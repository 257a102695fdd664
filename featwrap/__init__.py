"""featwrap: intermediate activations from any PyTorch model, in one correct line.

>>> from featwrap import FeatureModel
"""

from featwrap._version import __version__
from featwrap.errors import (
    BackboneError,
    FeatwrapError,
    HooksRemovedError,
    LayerNotFoundError,
    LayerSpecError,
    MissingFeatureError,
    RepeatedCallError,
)
from featwrap.extraction import DataError, Features, ResumeMismatchError, extract, load_features
from featwrap.info import DryRunWarning, FeatureInfo, FeatureMeta, feature_info
from featwrap.layer_summary import LayerRow, LayerSummary, summary
from featwrap.layers import Capture, LayerSpec, list_layers
from featwrap.maps import Tokens
from featwrap.model import FeatureModel
from featwrap.multiscale import stages

__all__ = [
    "BackboneError",
    "Capture",
    "DataError",
    "DryRunWarning",
    "FeatureInfo",
    "FeatureMeta",
    "FeatureModel",
    "Features",
    "FeatwrapError",
    "HooksRemovedError",
    "LayerNotFoundError",
    "LayerRow",
    "LayerSpec",
    "LayerSpecError",
    "LayerSummary",
    "MissingFeatureError",
    "RepeatedCallError",
    "ResumeMismatchError",
    "Tokens",
    "__version__",
    "extract",
    "feature_info",
    "list_layers",
    "load_features",
    "stages",
    "summary",
]
