"""What to extract from: a DataLoader, a map-style Dataset, or a folder of images.

Every input becomes a :class:`Source`: an indexable dataset, one id per sample (the image's path
relative to the folder, else the index) and a description for the manifest. Extraction then reads
the samples in dataset order, in batches it chooses itself (so that it can split them between
processes and resume), through a DataLoader built with the user's own loader settings.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from featwrap._dryrun import default_input_size
from featwrap.extraction.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderData",
    "Source",
    "default_transform",
    "find_images",
    "first_readable",
    "make_loader",
    "model_input",
    "printable",
    "read_batch",
    "read_rgb",
    "resolve_source",
    "stable_repr",
]

#: The file endings read as images (torchvision's ``IMG_EXTENSIONS``), compared case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

Transform = Callable[[Any], Any]


@dataclass
class Source:
    """An indexable dataset with one id per sample, and what the manifest says about it."""

    dataset: Any  # map-style: __len__ and __getitem__
    ids: list[str]
    description: str
    transform: str | None = None  # repr of the transform, when known
    classes: list[str] | None = None
    targets: list[int] | None = None
    collate_fn: Callable[[list[Any]], Any] | None = None
    loader_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None


# -- image folders ---------------------------------------------------------------------------------
def find_images(root: Path) -> tuple[list[Path], list[str] | None]:
    """The images under ``root`` (searched recursively) and their classes, in torchvision's order.

    When every image sits inside a first-level subfolder, the folder is read as torchvision's
    ``ImageFolder`` (one subfolder per class, classes sorted); otherwise it is flat and has no
    classes. Hidden files and folders are ignored. Raises :class:`DataError` for a missing path or
    a folder without images.
    """
    if not root.exists():
        what = "image" if root.suffix.lower() in IMAGE_EXTENSIONS else "data folder"
        raise DataError(
            f"The {what} {str(root)!r} does not exist. Pass a folder of images (searched "
            "recursively; one subfolder per class is fine), an image, a torch Dataset or a "
            "DataLoader."
        )
    if root.is_file():
        if root.suffix.lower() in IMAGE_EXTENSIONS:
            return [root], None
        raise DataError(
            f"{str(root)!r} is a file, not a folder of images (nor an image: it does not end with "
            f"{', '.join(IMAGE_EXTENSIONS)})."
        )
    keyed: list[tuple[tuple[str, str, str], Path]] = []
    others = 0
    # Symlinked folders are followed, each folder once: a link to a folder inside ``root`` is
    # left to the folder's own path (a link back up would loop), and a folder outside it that
    # several links reach is read through the first of them, in sorted order.
    inside = root.resolve()
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        folder = os.stat(dirpath)
        if (folder.st_dev, folder.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((folder.st_dev, folder.st_ino))
        dirnames[:] = [
            d
            for d in sorted(dirnames)
            if not d.startswith(".") and not _link_into(os.path.join(dirpath, d), inside)
        ]
        parent = Path(dirpath)
        rel_dir = parent.relative_to(root).as_posix()
        top = "" if rel_dir == "." else rel_dir.split("/", 1)[0]
        for name in filenames:
            if name.startswith("."):
                continue
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                others += 1
                continue
            # torchvision's order: class, then sorted(os.walk) roots, then sorted file names.
            keyed.append(((top, str(parent), name), parent / name))
    if not keyed:
        found = f" (it holds {others} other files)" if others else " (it is empty)"
        raise DataError(
            f"The data folder {str(root)!r} holds no images{found}. Images end with "
            f"{', '.join(IMAGE_EXTENSIONS)} and are searched recursively."
        )
    by_class = all(key[0] for key, _ in keyed)
    if not by_class:  # flat: the order of sorted(os.walk) roots, then file names
        keyed = [(("", key[1], key[2]), path) for key, path in keyed]
    keyed.sort(key=lambda item: item[0])
    paths = [path for _, path in keyed]
    if not by_class:
        return paths, None
    # every first-level folder is a class, as in torchvision's find_classes (an empty one too,
    # so that the class indices match); hidden folders are not.
    folders = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return paths, sorted(folders | {key[0] for key, _ in keyed})


def _link_into(path: str, root: Path) -> bool:
    """Whether ``path`` is a symlink to a folder inside ``root`` (or to ``root`` itself)."""
    return os.path.islink(path) and Path(path).resolve().is_relative_to(root)


class ImageFolderData(Dataset[Any]):
    """The images of a folder, read with PIL as RGB and passed through ``transform``.

    Args:
        root: a folder (searched recursively; one subfolder per class as torchvision's
            ``ImageFolder``, or flat) or a single image file.
        transform: applied to each ``PIL.Image`` (e.g. :func:`default_transform`).
    """

    def __init__(self, root: str | os.PathLike[str], transform: Transform | None = None) -> None:
        self.root = Path(root)
        self.paths, self.classes = find_images(self.root)
        self.transform = transform
        base = self.root if self.root.is_dir() else self.root.parent
        self.ids = [printable(p.relative_to(base).as_posix()) for p in self.paths]
        self.targets = (
            [self.classes.index(i.split("/", 1)[0]) for i in self.ids] if self.classes else None
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        rgb = read_rgb(self.paths[index])
        return self.transform(rgb) if self.transform is not None else rgb


def read_rgb(path: str | os.PathLike[str]) -> Any:
    """An image file as an 8-bit RGB ``PIL.Image``, as it is meant to be seen.

    Its EXIF orientation is applied (a phone's portrait photo stands upright), and modes with
    more than 8 bits keep their full range: 16-bit grayscale (``I;16``, and ``I``) is scaled
    from 0-65535, floating-point (``F``) from 0-1, where ``Image.convert`` would clip every
    value above 255 (or 1).
    """
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image)
    if upright.mode.startswith("I") or upright.mode == "F":
        import numpy as np

        values = np.asarray(upright, dtype=np.float64)
        top = 1.0 if upright.mode == "F" else 65535.0
        gray = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        upright = Image.fromarray(gray)
    return upright.convert("RGB")


def printable(name: str) -> str:
    r"""A file name made valid text: bytes that are not UTF-8 (which Python keeps as surrogates)
    shown as ``\xNN`` escapes.

    >>> printable("caf\udce9.png")
    'caf\\xe9.png'
    """
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def default_transform(
    model: torch.nn.Module, preset: Transform | None = None, image_size: int | None = None
) -> Transform:
    """The preprocessing for images fed to ``model``.

    The pretrained weights' own preset when there is one (torchvision weights) and no
    ``image_size`` is asked for; timm's data config for timm models; otherwise resize the short
    side to ``image_size * 256 / 224``, center-crop ``image_size`` (default: the model's own size,
    e.g. a transformers config's ``image_size``, else 224), scale to [0, 1] and normalize with
    the ImageNet mean and std.
    """
    import torchvision.transforms as T

    if preset is not None and image_size is None:
        return preset
    if getattr(model, "pretrained_cfg", None) is not None:  # a timm model
        from timm.data.config import resolve_model_data_config
        from timm.data.transforms_factory import create_transform

        config = resolve_model_data_config(model)  # type: ignore[no-untyped-call]
        if image_size is not None:
            config["input_size"] = (3, image_size, image_size)
        transform: Transform = create_transform(**config, is_training=False)
        return transform
    size = image_size if image_size is not None else default_input_size(model)[-1]
    standard: Transform = T.Compose(
        [
            T.Resize(round(size * 256 / 224)),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(_IMAGENET_MEAN, _IMAGENET_STD),
        ]
    )
    return standard


# -- any input -> Source ---------------------------------------------------------------------------
_LOADER_SETTINGS = (
    "num_workers",
    "pin_memory",
    "worker_init_fn",
    "multiprocessing_context",
    "prefetch_factor",
    "timeout",
    "pin_memory_device",
)


def resolve_source(
    data: Any, transform_for_images: Callable[[], Transform] | None = None
) -> Source:
    """Turn ``data`` (a DataLoader, a map-style Dataset, or a path) into a :class:`Source`.

    ``transform_for_images`` builds the transform used for a path (called only then).
    A DataLoader gives its dataset, batch size, collate_fn and worker settings; its sampler is
    not used: samples are read in dataset order.
    """
    if isinstance(data, (str, os.PathLike)):
        transform = transform_for_images() if transform_for_images is not None else None
        folder = ImageFolderData(data, transform)
        n_classes = f", {len(folder.classes)} classes" if folder.classes else ""
        return Source(
            dataset=folder,
            ids=folder.ids,
            description=f"image folder {str(Path(data).resolve())!r} ({len(folder)} images{n_classes})",
            transform=stable_repr(transform),
            classes=folder.classes,
            targets=folder.targets,
        )
    if isinstance(data, DataLoader):
        source = _dataset_source(data.dataset)
        source.collate_fn = data.collate_fn
        source.batch_size = data.batch_size or getattr(data.batch_sampler, "batch_size", None)
        source.loader_kwargs = {
            k: getattr(data, k) for k in _LOADER_SETTINGS if getattr(data, k, None) is not None
        }
        if data.num_workers == 0:
            source.loader_kwargs.pop("prefetch_factor", None)
        return source
    return _dataset_source(data)


def _dataset_source(dataset: Any) -> Source:
    if isinstance(dataset, IterableDataset):
        raise DataError(
            f"{type(dataset).__name__} is an IterableDataset: extract needs a map-style Dataset "
            "(with __len__ and __getitem__) to read samples in order, split them between processes "
            "and resume. Wrap the samples in a map-style Dataset, or pass a folder of images."
        )
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise DataError(
            f"data must be a DataLoader, a map-style Dataset (__len__ and __getitem__) or a folder "
            f"path, got {type(dataset).__name__}: {dataset!r:.80}"
        )
    n = len(dataset)
    if n == 0:
        raise DataError(f"The dataset {type(dataset).__name__} is empty (len() == 0).")
    ids, classes, targets = _dataset_ids(dataset, n)
    transform = getattr(dataset, "transform", None)
    return Source(
        dataset=dataset,
        ids=ids,
        description=f"{type(dataset).__module__}.{type(dataset).__qualname__} ({n} samples)",
        transform=None if transform is None else stable_repr(transform),
        classes=classes,
        targets=targets,
    )


def _dataset_ids(dataset: Any, n: int) -> tuple[list[str], list[str] | None, list[int] | None]:
    """Paths relative to the root for torchvision's DatasetFolder/ImageFolder, else indices."""
    samples = getattr(dataset, "samples", None)
    root = getattr(dataset, "root", None)
    if isinstance(samples, Sequence) and len(samples) == n and root is not None:
        try:
            ids = [Path(s[0]).relative_to(root).as_posix() for s in samples]
            classes = getattr(dataset, "classes", None)
            targets = [int(s[1]) for s in samples]
            return ids, list(classes) if classes is not None else None, targets
        except (TypeError, ValueError, IndexError):
            pass
    return [str(i) for i in range(n)], None, None


def stable_repr(obj: Any) -> str:
    """A repr that is the same in every process: functions by qualified name, and no addresses.

    >>> stable_repr(len), stable_repr(lambda x: x)
    ('builtins.len', 'featwrap.extraction.data.<lambda>')
    """
    if inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.ismethod(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    return _ADDRESS.sub(">", repr(obj))


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+>")


# -- reading batches -------------------------------------------------------------------------------
class _Indexed(Dataset[Any]):
    """Items ``(index, sample, error)``: a sample that fails to load becomes its error message."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        try:
            return index, self.dataset[index], None
        except Exception as error:
            return index, None, f"{type(error).__name__}: {error}".replace("\n", " ")


class _Collate:
    """Collates the good samples with the user's collate_fn; reports the failed ones apart."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any] | None) -> None:
        self.collate_fn = collate_fn or default_collate

    def __call__(
        self, items: list[tuple[int, Any, str | None]]
    ) -> tuple[list[int], Any, list[tuple[int, str]]]:
        good = [(i, sample) for i, sample, error in items if error is None]
        failed = [(i, error) for i, _, error in items if error is not None]
        batch = self.collate_fn([sample for _, sample in good]) if good else None
        return [i for i, _ in good], batch, failed


def make_loader(
    source: Source, batches: list[list[int]], num_workers: int | None, pin_memory: bool
) -> DataLoader[Any]:
    """A DataLoader over ``batches`` (lists of dataset indices), yielding
    ``(indices, batch, failed)`` with ``failed`` the ``(index, error)`` of unreadable samples."""
    kwargs = dict(source.loader_kwargs)
    if num_workers is not None:
        kwargs["num_workers"] = num_workers
    elif "num_workers" not in kwargs:
        kwargs["num_workers"] = min(4, os.cpu_count() or 1) if len(batches) > 1 else 0
    if kwargs["num_workers"] == 0:
        for key in ("prefetch_factor", "worker_init_fn", "multiprocessing_context", "timeout"):
            kwargs.pop(key, None)
    if pin_memory:
        kwargs["pin_memory"] = True
    return DataLoader(
        _Indexed(source.dataset),
        batch_sampler=batches,
        collate_fn=_Collate(source.collate_fn),
        **kwargs,
    )


def read_batch(source: Source, indices: list[int]) -> tuple[list[int], Any, list[tuple[int, str]]]:
    """One batch read in this process, as the DataLoader of :func:`make_loader` yields it."""
    indexed = _Indexed(source.dataset)
    return _Collate(source.collate_fn)([indexed[i] for i in indices])


def first_readable(
    source: Source, skip: bool, unreadable: Callable[[int, str], Exception]
) -> tuple[int, Any]:
    """``(index, batch of one)`` of the first sample that can be read; an unreadable one before
    it raises ``unreadable(index, error)`` unless ``skip``."""
    indexed = _Indexed(source.dataset)
    for i in range(len(indexed)):
        index, sample, problem = indexed[i]
        if problem is None:
            _, batch, _ = _Collate(source.collate_fn)([(index, sample, None)])
            return index, batch
        if not skip:
            raise unreadable(index, problem)
    raise DataError(f"No sample of {source.description} could be read.")


def model_input(batch: Any) -> Any:
    """The model's input in a collated batch: the batch itself, or the first item of a tuple/list
    (``(images, labels)``)."""
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    if isinstance(batch, dict):
        raise DataError(
            f"The dataset's samples are dicts (keys {sorted(batch)[:6]}): extract cannot tell which "
            "entry is the model's input. Use a Dataset whose samples are a tensor or a tuple "
            "(input, target)."
        )
    return batch
