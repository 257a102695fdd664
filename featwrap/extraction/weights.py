"""The weights' sha256, the model's part of a run's identity for resuming, hashed on a thread.

A run to disk records the digest of its model's state dict in its spec; a resumed run must have
the same. Hashing takes a while (ResNet-50 78 ms, ViT-B/16 250 ms on a CPU core), so
:class:`WeightsDigest` starts it on a background thread (``hashlib`` releases the GIL on big
buffers) while the run opens its DataLoader and computes its first batch, and the run waits for
it only where its spec is first needed.

What is hashed is fixed when hashing starts: the thread holds references to the state dict's
tensors as they are then, so the module being put in channels_last or moved to its device
meanwhile (which give its parameters new tensors) changes nothing. The value is the one
:func:`parameters_digest` computes, as before: outputs written by earlier versions resume.
A module whose forward changes its own weights in place while they are hashed would get a
digest of neither state, and its run could not be resumed (the spec would differ).

>>> from torch import nn
>>> net = nn.Linear(2, 2)
>>> WeightsDigest(net).result() == parameters_digest(net)
True
"""

from __future__ import annotations

import hashlib
import threading

import torch
from torch import nn

__all__ = ["WeightsDigest", "parameters_digest"]

#: ``(name, tensor)`` of each tensor of a state dict
_Tensors = list[tuple[str, torch.Tensor]]


def parameters_digest(module: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes): the weights' identity."""
    return _hash(_state_tensors(module))


class WeightsDigest:
    """:func:`parameters_digest` of ``module`` as it is now, computed on a background thread."""

    def __init__(self, module: nn.Module) -> None:
        self._tensors: _Tensors | None = _state_tensors(module)
        self._value = ""
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="featwrap-sha256", daemon=True)
        self._thread.start()

    def result(self) -> str:
        """The digest, once the thread is done; re-raises its failure."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value

    def _run(self) -> None:
        try:
            self._value = _hash(self._tensors or [])
        except BaseException as error:  # raised where the digest is asked for
            self._error = error
        finally:
            self._tensors = None  # the weights as they were are not kept alive any longer


def _state_tensors(module: nn.Module) -> _Tensors:
    """The state dict's tensors, detached: references to their storage as it is now."""
    return [(k, v.detach()) for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)]


def _hash(tensors: _Tensors) -> str:
    digest = hashlib.sha256()
    for name, value in tensors:
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        data = value.to("cpu").contiguous().reshape(-1)
        digest.update(data.view(torch.uint8).numpy().data if data.numel() else b"")
    return digest.hexdigest()
