"""featwrap: intermediate activations from any PyTorch model, in one correct line.

>>> from featwrap import FeatureModel
"""

from featwrap.errors import (
    BackboneError,
    FeatwrapError,
    HooksRemovedError,
    LayerNotFoundError,
    LayerSpecError,
    MissingFeatureError,
    RepeatedCallError,
)
from featwrap.extract import DataError, Features, ResumeMismatchError, extract, load_features
from featwrap.info import DryRunWarning, FeatureInfo, FeatureMeta, feature_info
from featwrap.layers import Capture, LayerSpec, list_layers
from featwrap.model import FeatureModel
from featwrap.stages import stages
from featwrap.summary import LayerRow, LayerSummary, summary

__version__ = "0.1.0"

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
    "__version__",
    "extract",
    "feature_info",
    "list_layers",
    "load_features",
    "stages",
    "summary",
]
