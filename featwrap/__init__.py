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
from featwrap.layers import LayerSpec, list_layers
from featwrap.model import FeatureModel

__version__ = "0.1.0"

__all__ = [
    "BackboneError",
    "FeatureModel",
    "FeatwrapError",
    "HooksRemovedError",
    "LayerNotFoundError",
    "LayerSpec",
    "LayerSpecError",
    "MissingFeatureError",
    "RepeatedCallError",
    "__version__",
    "list_layers",
]
