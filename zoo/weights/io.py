"""Reading checkpoints without ever running code from them.

Weights are read with safetensors or ``torch.load(weights_only=True)``: a pickle that would
import or call anything is refused by torch's restricted unpickler and reported as such.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

__all__ = ["UnsafeCheckpointError", "load_torch_file", "read_state_dict", "unwrap_state_dict"]

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
        ValueError: the file is empty, truncated or not a checkpoint.
    """
    path = Path(path)
    _check_file(path)
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError (header, size, dtype)
            raise ValueError(f"{str(path)!r} is not a readable safetensors file (truncated?): {_first_line(e)}") from None
        return unwrap_state_dict(tensors, str(path))
    return unwrap_state_dict(load_torch_file(path), str(path))


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist or is not a file.")
    if path.stat().st_size == 0:
        raise ValueError(f"{str(path)!r} is empty (0 bytes): it was cut off while being written or copied. "
                         "Use another copy of the file (or delete it and download it again).")


def load_torch_file(path: str | os.PathLike) -> object:
    """``torch.load(path, weights_only=True)`` on CPU, with errors that name the file and what to do.

    Raises:
        FileNotFoundError: the path does not exist.
        UnsafeCheckpointError: the pickle needs code execution; it was refused, not run.
        ValueError: the file is empty, truncated, or not a torch file.
    """
    path = Path(path)
    _check_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _unpickler_reason(e)
        if "global" not in reason.lower():  # garbage bytes fail as "unsupported operand", not as code
            raise ValueError(f"{str(path)!r} is not a readable checkpoint (truncated or not a torch file): {reason}") from None
        raise UnsafeCheckpointError(
            f"Refused to load {str(path)!r}: it is a pickle that wants to run code ({reason}). "
            "It was not executed. If you trust its author, convert it to safetensors in an isolated "
            "environment; zoo only reads weights."
        ) from None
    except Exception as e:  # zip, EOF, or the unpickler's own stack errors on a text or truncated file
        raise ValueError(f"{str(path)!r} is not a readable checkpoint (truncated or not a torch file): {_first_line(e)}") from None


def _unpickler_reason(e: BaseException) -> str:
    # torch's message opens with generic advice; the reason is a later line: the blocked GLOBAL (code
    # the pickle wants to run), else what follows "WeightsUnpickler error:" (e.g. an unsupported operand).
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    hit = next((ln for ln in lines if "global" in ln.lower()), None)
    if hit:
        return hit
    for i, ln in enumerate(lines):
        if ln.startswith("WeightsUnpickler error:"):
            rest = [x for x in [ln.split(":", 1)[1].strip(), *lines[i + 1:]] if x]
            if rest:
                return rest[0]
    return _first_line(e)


def _looks_like_safetensors(path: Path) -> bool:
    # A safetensors file starts with an 8-byte little-endian header length, then a JSON '{'.
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
