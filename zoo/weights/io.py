"""Reading checkpoints without ever running code from them.

Weights are read with safetensors or ``torch.load(weights_only=True)``: a pickle that would
import or call anything is refused by torch's restricted unpickler and reported as such.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from .formats import NotACheckpointError, check_file, sniff

__all__ = ["NotACheckpointError", "UnsafeCheckpointError", "load_torch_file", "read_state_dict", "unwrap_state_dict"]

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
        NotACheckpointError (a ValueError): the file is empty, truncated or not a checkpoint (an HTML
            page, text, ...); the message names the file, says what it is and what to do.
    """
    path = Path(path)
    _check_file(path)
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError (header, size, dtype)
            raise _unreadable(path, e) from None
        return unwrap_state_dict(tensors, str(path))
    return unwrap_state_dict(load_torch_file(path), str(path))


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist or is not a file.")
    if path.stat().st_size == 0:
        raise NotACheckpointError(f"{str(path)!r} is empty (0 bytes): it was cut off while being written or "
                                  "copied. Use another copy of the file (or delete it and download it again).",
                                  "empty (0 bytes)", truncated=True)


def load_torch_file(path: str | os.PathLike) -> object:
    """``torch.load(path, weights_only=True)`` on CPU, with errors that name the file and what to do.

    Only a zip archive or a pickle reaches the unpickler: text, HTML and the like are named for what
    they are (to the unpickler a text starting with ``c`` is an import, and ``e`` an unknown key).

    Raises:
        FileNotFoundError: the path does not exist.
        UnsafeCheckpointError: the pickle needs code execution; it was refused, not run.
        NotACheckpointError (a ValueError): the file is empty, truncated, or not a torch file.
    """
    path = Path(path)
    _check_file(path)
    with open(path, "rb") as f:
        kind = sniff(f.read(16))
    if kind not in ("zip", "pickle"):
        raise _unreadable(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        name = _blocked_global(e)
        if name is None:  # garbage or a cut file fails as "unsupported operand", not as code
            raise _unreadable(path, e) from None
        raise UnsafeCheckpointError(_unsafe_message(path, name)) from None
    except Exception as e:  # zip, EOF, or the unpickler's own stack errors on a damaged or truncated file
        raise _unreadable(path, e) from None


def _unreadable(path: Path, error: BaseException | None = None) -> NotACheckpointError:
    """Why ``path`` cannot be read, from its structure (:func:`zoo.weights.formats.check_file`), in
    zoo's words: the reader's own message is used only when the structure looks sound, cleaned of
    torch's advice to retry with ``weights_only=False``, which must never reach a user here."""
    try:
        check_file(path, claimed=path.name, full=False)
        reason, cut = f"a file its reader rejects ({_clean(error) if error else 'unknown format'})", False
    except NotACheckpointError as e:
        reason, cut = e.reason, e.truncated
    todo = ("Use another copy of the file (or delete it and download it again)." if cut else
            "Pass a checkpoint: a .safetensors file, or a .pth/.pt/.bin/.ckpt written by torch.save.")
    return NotACheckpointError(f"{str(path)!r} is not a readable checkpoint: it is {reason}. {todo}", reason, cut)


def _blocked_global(e: BaseException) -> str | None:
    """The import torch's restricted unpickler refused (``posix.system``), or None for another failure."""
    m = re.search(r"GLOBAL (\S+)", str(e))  # "Unsupported global: GLOBAL x.y was not ...", "... GLOBAL x.y whose module"
    return m.group(1) if m else None


def _unsafe_message(path: Path, name: str) -> str:
    how = ""
    if name.startswith("torch.storage._load_from_bytes"):
        how = (" Its tensors were pickled with pickle.dump rather than torch.save, and torch rebuilds those only "
               "by running code.")
    return (f"Refused to load {str(path)!r}: it is a pickle that wants to run code (it calls {name}). It was "
            f"not executed.{how} If you trust its author, re-save its weights in an isolated environment with "
            "torch.save(model.state_dict(), path) or safetensors; zoo only reads weights.")


# Phrases of torch's messages that advise loading with weights_only=False or allow-listing globals.
_ADVICE = ("weights_only", "likely succeed", "safe_globals", "arbitrary code", "trusted source", "file an issue")


def _clean(e: BaseException) -> str:
    """The first informative sentence of a reader's error, without torch's advice."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("WeightsUnpickler error:") and ln.split(":", 1)[1].strip():
            lines = [ln.split(":", 1)[1].strip()]
            break
    lines = [ln for ln in lines if not any(a in ln for a in _ADVICE)]
    text = lines[0] if lines else type(e).__name__
    return text.split(". ")[0].rstrip(".") or type(e).__name__


def _looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        return sniff(f.read(16)) == "safetensors"
