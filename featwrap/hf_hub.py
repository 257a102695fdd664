"""``hf:`` model names: Hugging Face ``transformers`` models from a local folder or the local cache.

``hf:FOLDER`` is a folder written by ``save_pretrained`` (``config.json`` and, for pretrained
weights, ``model.safetensors`` or ``pytorch_model.bin``); ``hf:ORG/NAME`` is a model already in
the Hugging Face cache (``$HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``). Nothing is
ever downloaded. The model class is the one its config names (``config.architectures``, e.g.
``ViTForImageClassification``), else ``AutoModel``.

``transformers`` is optional (``pip install 'featwrap[hf]'``): it is imported here, when an
``hf:`` name is loaded, and nowhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from featwrap.errors import FeatwrapValueError, MissingDependencyError, UnknownModelError

__all__ = ["HF_PREFIX", "WEIGHTS_FILES", "build", "model_folder", "weights_file"]

HF_PREFIX = "hf:"
#: The files save_pretrained writes the weights to (one of them), in the order looked for.
WEIGHTS_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def model_folder(name: str) -> Path:
    """The folder holding the config.json of ``name``: a local folder, or its cache snapshot.

    Raises:
        UnknownModelError: neither a folder nor a cached model (featwrap never downloads).
        FeatwrapValueError: a folder without config.json.
    """
    ref = name.removeprefix(HF_PREFIX)
    if not ref:
        raise UnknownModelError(
            f"{name!r} names no model: use 'hf:path/to/folder' (written by save_pretrained) or "
            "'hf:org/name' (a model in the Hugging Face cache)."
        )
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FeatwrapValueError(
                f"The folder {str(path)!r} of {name} has no config.json: it must be a folder "
                "written by a transformers model's save_pretrained(folder)."
            )
        return path
    cached, cache = _cached_config(ref)
    if cached is None:
        raise UnknownModelError(
            f"{name}: {ref!r} is neither a folder nor a model in the Hugging Face cache "
            f"({cache}); featwrap never downloads. Download it once online (huggingface-cli "
            "download ORG/NAME, or from_pretrained), or save_pretrained a model into a folder "
            "and pass 'hf:FOLDER'."
        )
    return cached


def weights_file(folder: Path) -> Path | None:
    """The weights file of a save_pretrained folder (or cache snapshot); None if it has none."""
    for filename in WEIGHTS_FILES:
        if (folder / filename).is_file():
            return folder / filename
    return None


def build(folder: Path, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """The config's architecture (else ``AutoModel``): random weights from the config, or
    ``from_pretrained`` on the folder (local files only)."""
    transformers = _transformers()
    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    architectures = getattr(config, "architectures", None) or []
    cls = getattr(transformers, architectures[0], None) if architectures else None
    if cls is None:
        cls = transformers.AutoModel
    if pretrained:
        model: nn.Module = cls.from_pretrained(str(folder), local_files_only=True, **kwargs)
    elif cls is transformers.AutoModel:
        model = cls.from_config(config, **kwargs)
    else:
        model = cls(config, **kwargs)
    return model


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as error:
        raise MissingDependencyError(
            "hf: model names need the transformers package, which is not installed "
            f"({error}). Install it with pip install 'featwrap[hf]' (or uv sync --extra hf)."
        ) from error
    return transformers


def _cached_config(repo: str) -> tuple[Path | None, str]:
    """The cache snapshot folder holding ``repo``'s config.json, and the cache's path."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # huggingface_hub comes with transformers (and timm)
        _transformers()
        raise
    cache = str(constants.HF_HUB_CACHE)  # read now: tests and users may point it elsewhere
    try:
        found = try_to_load_from_cache(repo, "config.json", cache_dir=cache)
    except ValueError:  # not a repo id ("a/b/c", spaces...)
        return None, cache
    return (Path(found).parent if isinstance(found, str) else None), cache
