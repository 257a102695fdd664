"""Models by name: ``torchvision:resnet18``, ``timm:convnext_atto``, ``hf:org/name``,
``package.module:factory``.

Weights: ``"none"`` (random, seeded so that reruns agree), a torchvision weights name
(``"DEFAULT"``, ``"IMAGENET1K_V1"``) or ``"pretrained"`` when the local cache or network has them,
or the path of a local checkpoint file.
"""

from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featwrap import hf_hub
from featwrap._text import did_you_mean, suggest
from featwrap.errors import (
    FeatwrapValueError,
    UnknownModelError,
    WeightsUnavailableError,
)

__all__ = ["LoadedModel", "UnknownModelError", "WeightsUnavailableError", "load_model"]

#: The seed used for random weights, so that reruns and resumed runs give identical features.
RANDOM_WEIGHTS_SEED = 0


@dataclass
class LoadedModel:
    """A model with the description of where it came from (recorded in extraction manifests)."""

    model: nn.Module
    name: str  # canonical "source:name"
    weights: str  # "none (random, seed 0)", a weights name, or a file path
    pretrained: bool
    transforms: Any = None  # the torchvision weights' preprocessing, when known


def load_model(name: str, weights: str | None = "none", **kwargs: Any) -> LoadedModel:
    """Build a model from its name, in eval mode.

    Args:
        name: ``"torchvision:resnet18"``, ``"timm:resnet18"``, ``"package.module:factory"`` or a
            bare name looked up in torchvision, then timm; ``"hf:FOLDER"`` (a ``save_pretrained``
            folder) or ``"hf:ORG/NAME"`` (in the local Hugging Face cache) for a
            ``transformers`` model (see :mod:`featwrap.hf_hub`; needs ``featwrap[hf]``).
        weights: ``"none"``/``None`` for random (seeded) weights, ``"pretrained"``/``"DEFAULT"``
            or a torchvision weights name, or a path to a local checkpoint (a state dict, or a dict
            holding one under ``"state_dict"``, ``"model"`` or ``"model_state_dict"``).
        **kwargs: passed to the model factory (``num_classes=10``, ``image_size=64``...).
    """
    if not isinstance(name, str) or not name:
        raise FeatwrapValueError(f"model name must be a non-empty string, got {name!r}")
    weights = "none" if weights is None else str(weights)
    checkpoint = _checkpoint_path(weights)
    if name.startswith(hf_hub.HF_PREFIX):
        return _finish(_hf(name, None if checkpoint else weights, kwargs), checkpoint)
    source, _, short = name.rpartition(":")
    if source in ("", "torchvision", "tv"):
        if source or _torchvision_has(short):
            return _finish(_torchvision(short, None if checkpoint else weights, kwargs), checkpoint)
        if _timm_has(short):
            return _finish(_timm(short, None if checkpoint else weights, kwargs), checkpoint)
        raise UnknownModelError(_unknown(short))
    if source == "timm":
        return _finish(_timm(short, None if checkpoint else weights, kwargs), checkpoint)
    return _finish(_factory(source, short, None if checkpoint else weights, kwargs), checkpoint)


def _checkpoint_path(weights: str) -> Path | None:
    looks_like_path = os.sep in weights or weights.endswith(
        (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
    )
    if not looks_like_path:
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FeatwrapValueError(f"weights file {weights!r} does not exist (or is not a file).")
    return path


def _finish(loaded: LoadedModel, checkpoint: Path | None) -> LoadedModel:
    if checkpoint is not None:
        state = _read_checkpoint(checkpoint)
        try:
            loaded.model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise FeatwrapValueError(
                f"The checkpoint {str(checkpoint)!r} does not fit {loaded.name}: {error}"
            ) from error
        loaded.weights, loaded.pretrained = str(checkpoint), True
    loaded.model.eval()
    return loaded


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        return {k.removeprefix("module."): v for k, v in obj.items()}
    raise FeatwrapValueError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict.")


def _random(build: Any) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model: nn.Module = build()
    return model


def _is_random(weights: str | None) -> bool:
    return weights is None or weights.lower() in ("none", "random")


# -- torchvision -----------------------------------------------------------------------------------
def _torchvision_has(name: str) -> bool:
    import torchvision.models as tvm

    return name in tvm.list_models()


def _torchvision(name: str, weights: str | None, kwargs: dict[str, Any]) -> LoadedModel:
    import torchvision.models as tvm

    if name not in tvm.list_models():
        raise UnknownModelError(_unknown(name, "torchvision"))
    if _is_random(weights):
        model = _random(lambda: tvm.get_model(name, weights=None, **kwargs))
        return LoadedModel(
            model, f"torchvision:{name}", f"none (random, seed {RANDOM_WEIGHTS_SEED})", False
        )
    assert weights is not None
    enum = tvm.get_model_weights(name)
    wanted = "DEFAULT" if weights.lower() in ("pretrained", "default", "true") else weights
    try:
        chosen = enum[wanted.split(".")[-1]]
    except KeyError:
        names = ", ".join(repr(w.name) for w in enum)
        raise FeatwrapValueError(
            f"{weights!r} is not a weights name of torchvision:{name}; choose one of {names}, "
            "'none', or a checkpoint file."
        ) from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(chosen.url)
    try:
        model = tvm.get_model(name, weights=chosen, **kwargs)
    except Exception as error:
        raise WeightsUnavailableError(
            f"Could not load torchvision weights {chosen} for {name}: they are not in the cache "
            f"({cached}) and downloading failed ({type(error).__name__}: {error}). Put the file at "
            f"that path (from {chosen.url}), pass a local checkpoint file as weights, or use "
            "weights='none' for random weights."
        ) from error
    return LoadedModel(model, f"torchvision:{name}", str(chosen), True, chosen.transforms())


# -- timm ------------------------------------------------------------------------------------------
def _timm_has(name: str) -> bool:
    import timm

    return bool(timm.list_models(name))


def _timm(name: str, weights: str | None, kwargs: dict[str, Any]) -> LoadedModel:
    import timm

    if not timm.list_models(name):
        raise UnknownModelError(_unknown(name, "timm"))
    if _is_random(weights):
        model = _random(lambda: timm.create_model(name, pretrained=False, **kwargs))
        return LoadedModel(
            model, f"timm:{name}", f"none (random, seed {RANDOM_WEIGHTS_SEED})", False
        )
    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except Exception as error:
        raise WeightsUnavailableError(
            f"Could not load timm pretrained weights for {name} ({type(error).__name__}: {error}). "
            "They must be in the Hugging Face cache (HF_HOME) or downloadable; otherwise pass a "
            "local checkpoint file as weights, or weights='none' for random weights."
        ) from error
    return LoadedModel(model, f"timm:{name}", "pretrained", True)


# -- hf: transformers models from a folder or the cache -------------------------------------------
def _hf(name: str, weights: str | None, kwargs: dict[str, Any]) -> LoadedModel:
    folder = hf_hub.model_folder(name)
    if _is_random(weights):
        model = _random(lambda: hf_hub.build(folder, False, kwargs))
        return LoadedModel(model, name, f"none (random, seed {RANDOM_WEIGHTS_SEED})", False)
    assert weights is not None
    if weights.lower() not in ("pretrained", "default", "true"):
        raise FeatwrapValueError(
            f"weights={weights!r} for {name}: use 'pretrained' (the weights in {folder}), 'none' "
            "(random) or the path of a checkpoint file."
        )
    found = hf_hub.weights_file(folder)
    if found is None:
        raise WeightsUnavailableError(
            f"{name} has no weights in {folder} (none of {', '.join(hf_hub.WEIGHTS_FILES)}), "
            "only its config. Save the model there with save_pretrained, download it once "
            "online (huggingface-cli download ORG/NAME), or use weights='none' for random "
            "weights."
        )
    return LoadedModel(hf_hub.build(folder, True, kwargs), name, f"pretrained ({found})", True)


# -- package.module:factory ------------------------------------------------------------------------
def _factory(
    module_name: str, attr: str, weights: str | None, kwargs: dict[str, Any]
) -> LoadedModel:
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UnknownModelError(
            f"Cannot import {module_name!r} for the model {module_name}:{attr} ({error}). Use "
            "'torchvision:NAME', 'timm:NAME' or 'package.module:factory' with an importable module."
        ) from error
    factory = getattr(module, attr, None)
    if not callable(factory):
        hint = did_you_mean(attr, [n for n in dir(module) if not n.startswith("_")])
        raise UnknownModelError(f"{module_name} has no callable {attr!r}.{hint}")
    if not _is_random(weights):
        raise FeatwrapValueError(
            f"weights={weights!r} for {module_name}:{attr}: a factory gets its weights from a "
            "checkpoint file (pass its path) or is built with random weights ('none')."
        )
    model = _random(lambda: factory(**kwargs))
    if not isinstance(model, nn.Module):
        raise FeatwrapValueError(
            f"{module_name}:{attr}() returned {type(model).__name__}, not a torch.nn.Module."
        )
    return LoadedModel(
        model, f"{module_name}:{attr}", f"none (random, seed {RANDOM_WEIGHTS_SEED})", False
    )


def _unknown(name: str, source: str | None = None) -> str:
    import timm
    import torchvision.models as tvm

    candidates: list[str] = []
    if source in (None, "torchvision"):
        candidates += [f"torchvision:{n}" for n in tvm.list_models()]
    if source in (None, "timm"):
        candidates += [f"timm:{n}" for n in timm.list_models()]
    bare: dict[str, str] = {}
    for c in candidates:  # torchvision first: its name wins for a bare name both registries have
        bare.setdefault(c.split(":", 1)[1], c)
    close = [bare[c] for c in difflib.get_close_matches(name, list(bare), n=3, cutoff=0.6)]
    where = source or "torchvision or timm"
    hint = suggest(close)
    return (
        f"Unknown model {name!r} in {where}.{hint} Names look like 'torchvision:resnet18', "
        "'timm:convnext_atto' or 'package.module:factory'; torchvision.models.list_models() and "
        "timm.list_models() list them."
    )


# -- pretrained when cached, else random (featwrap extract's default) ------------------------------
def load_model_noted(
    name: str, weights: str | None = "auto", **kwargs: Any
) -> tuple[LoadedModel, str | None]:
    """:func:`load_model`, where ``weights="auto"`` is :func:`load_model_cached` (pretrained
    weights when cached locally, else seeded random ones and a note saying so); other weights
    come without a note."""
    if weights == "auto":
        return load_model_cached(name, **kwargs)
    return load_model(name, weights, **kwargs), None


def load_model_cached(name: str, **kwargs: Any) -> tuple[LoadedModel, str | None]:
    """The model with pretrained weights when they are in the local cache, else random ones.

    Never downloads. torchvision weights are looked up in ``torch.hub``'s checkpoint folder
    (``$TORCH_HOME/hub/checkpoints``), timm weights in the Hugging Face cache, ``hf:`` weights in
    the model's folder or cache snapshot. Returns the model and, when it fell back to random
    (seeded) weights, a note that says so and how to get the pretrained ones; ``None`` when the
    weights are pretrained (or the model has none to offer).
    """
    if name.startswith(hf_hub.HF_PREFIX):
        return _hf_cached(name, kwargs)
    source, _, short = name.rpartition(":")
    if source in ("", "torchvision", "tv") and (source or _torchvision_has(short)):
        cached = _cached_torchvision_weights(short)
        if cached is not None and cached[1].is_file():
            return load_model(name, cached[0], **kwargs), None
        loaded = load_model(name, "none", **kwargs)
        if cached is None:
            return loaded, None
        return loaded, _random_note(
            loaded.name,
            f"the local cache ({cached[1]})",
            f"download {cached[2]} to that path (or run once online with --weights DEFAULT)",
        )
    if source == "timm" or (source == "" and _timm_has(short)):
        file, repo = _cached_timm_weights(short)
        if file is not None:
            import timm

            model = timm.create_model(
                short, pretrained=True, pretrained_cfg_overlay={"file": file}, **kwargs
            )
            loaded = LoadedModel(model, f"timm:{short}", f"pretrained ({file})", True)
            return _finish(loaded, None), None
        loaded = load_model(name, "none", **kwargs)
        if repo is None:
            return loaded, None
        return loaded, _random_note(
            loaded.name,
            f"the Hugging Face cache (repo {repo})",
            "run once online with --weights pretrained, or pass a checkpoint file as --weights",
        )
    return load_model(name, "none", **kwargs), None


def _hf_cached(name: str, kwargs: dict[str, Any]) -> tuple[LoadedModel, str | None]:
    folder = hf_hub.model_folder(name)
    if hf_hub.weights_file(folder) is not None:
        return _finish(_hf(name, "pretrained", kwargs), None), None
    loaded = _finish(_hf(name, "none", kwargs), None)
    return loaded, _random_note(
        name,
        f"{folder} (its config only)",
        "save_pretrained the model into that folder, or download it once online "
        "(huggingface-cli download ORG/NAME)",
    )


def _cached_torchvision_weights(name: str) -> tuple[str, Path, str] | None:
    """``(weights name, cache path, url)`` of the model's DEFAULT weights; None if it has none."""
    import torchvision.models as tvm

    try:
        default = tvm.get_model_weights(name).DEFAULT
    except (KeyError, ValueError, AttributeError):
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(default.url)
    return str(default), path, default.url


def _cached_timm_weights(name: str) -> tuple[str | None, str | None]:
    """``(cached file, hub repo)`` of the model's default pretrained weights."""
    from timm.models import get_pretrained_cfg

    base, _, tag = name.partition(".")
    cfg = get_pretrained_cfg(name if tag else base) if _timm_has(base) else None
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None, None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None, repo
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found, repo
    return None, repo


def _random_note(model: str, where: str, how: str) -> str:
    return (
        f"No pretrained weights for {model} in {where}: using random weights (seed "
        f"{RANDOM_WEIGHTS_SEED}, so reruns give the same features; recorded in the manifest). "
        f"For pretrained features, {how}."
    )
