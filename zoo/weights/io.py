"""Reading checkpoints without ever running code from them.

Weights are read with safetensors or ``torch.load(weights_only=True)``: a pickle that would
import or call anything is refused by torch's restricted unpickler and reported as such.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

__all__ = ["UnsafeCheckpointError", "read_state_dict", "unwrap_state_dict"]

# Containers that training scripts wrap the weights in, most specific first. ``model_ema`` is
# not preferred over ``model`` on purpose: the plain weights are what a publisher evaluated.
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict", "net")


class UnsafeCheckpointError(RuntimeError):
    """The file is a pickle that would need to run code to load; it was not executed."""


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the flat ``name -> tensor`` dict inside a loaded checkpoint object.

    Handles the usual wrappers (``{"model": ...}`` of the official Swin repo, Lightning's
    ``{"state_dict": ...}``) and prefixes (``module.`` from DDP, ``model.`` from a LightningModule,
    ``_orig_mod.`` from ``torch.compile``).
    """
    while isinstance(obj, dict) and not _is_flat(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise ValueError(
                f"{source}: no state dict found; top-level keys are {sorted(map(str, obj))[:10]}. "
                f"Expected a flat name->tensor dict or one under {list(_WRAPPER_KEYS)}."
            )
        obj = inner
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a dict of tensors, got {type(obj).__name__}.")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "_orig_mod.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _is_flat(d: dict) -> bool:
    return bool(d) and any(isinstance(v, torch.Tensor) for v in d.values())


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file safely and return its flat state dict (float tensors on CPU).

    Args:
        path: ``.safetensors``, or a torch file (``.pth``, ``.pt``, ``.bin``, ``.ckpt``).

    Raises:
        FileNotFoundError: the path does not exist.
        UnsafeCheckpointError: the pickle needs code execution; it was refused, not run.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist or is not a file.")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors.torch import load_file

        return unwrap_state_dict(load_file(str(path), device="cpu"), str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"Refused to load {str(path)!r}: it is a pickle that wants to run code ({_first_line(e)}). "
            "It was not executed. If you trust its author, convert it to safetensors in an isolated "
            "environment; zoo only reads weights."
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{str(path)!r} is not a readable checkpoint (truncated or not a torch file): {_first_line(e)}") from None
    return unwrap_state_dict(obj, str(path))


def _looks_like_safetensors(path: Path) -> bool:
    # A safetensors file starts with an 8-byte little-endian header length, then a JSON '{'.
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
