"""featwrap: intermediate activations from any PyTorch model, in one correct line.

>>> from featwrap import FeatureModel
"""

from featwrap.errors import (
    BackboneError,
    FeatureModifiedError,
    FeatwrapError,
    HooksRemovedError,
    LayerNotFoundError,
    LayerSpecError,
    MissingFeatureError,
    RepeatedCallError,
)
from featwrap.extract import DataError, Features, ResumeMismatchError, extract, load_features
from featwrap.layers import LayerSpec, list_layers
from featwrap.model import FeatureModel

__version__ = "0.1.0"

__all__ = [
    "BackboneError",
    "DataError",
    "FeatureModel",
    "FeatureModifiedError",
    "Features",
    "FeatwrapError",
    "HooksRemovedError",
    "LayerNotFoundError",
    "LayerSpec",
    "LayerSpecError",
    "MissingFeatureError",
    "RepeatedCallError",
    "ResumeMismatchError",
    "__version__",
    "extract",
    "list_layers",
    "load_features",
]
