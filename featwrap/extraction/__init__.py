"""Feature extraction over datasets: :func:`extract` and :func:`load_features`.

``featwrap.extract(model, data, layers, out=DIR)`` runs a backbone over a DataLoader, a Dataset or
a folder of images and streams the chosen layers' features to a safetensors file with a manifest;
it resumes after a crash and splits the work between ``torchrun`` processes.
``featwrap.load_features(DIR)`` maps them back, one tensor per layer.
"""

from featwrap.extraction.errors import (
    DataError,
    OutputBusyError,
    OutputError,
    ResumeMismatchError,
    ResumeWarning,
)
from featwrap.extraction.load import Features, layer_statistics, load_features
from featwrap.extraction.pool import POOLS, PoolSpec
from featwrap.extraction.run import extract

__all__ = [
    "POOLS",
    "DataError",
    "Features",
    "OutputBusyError",
    "OutputError",
    "PoolSpec",
    "ResumeMismatchError",
    "ResumeWarning",
    "extract",
    "layer_statistics",
    "load_features",
]
