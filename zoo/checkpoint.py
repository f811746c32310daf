"""The one reader of the checkpoints ``train.py`` writes: eval.py, zoo.viz and resume all use it.

A train.py checkpoint is a Lightning checkpoint with two zoo additions (written by
:meth:`zoo.train.ClassificationModule.on_save_checkpoint`):

* ``zoo``: ``{model_name, num_classes, class_names, data_config, model_kwargs}``, enough to rebuild
  the model with :func:`zoo.create` and preprocess images as in training;
* ``ema_state_dict``: the EMA weights (timm ``ModelEmaV3``, keys ``module.<name>``), when trained with EMA.

The model's weights are ``state_dict`` under ``model.<name>``. Files are read with
``torch.load(weights_only=True)``: nothing in them runs.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .weights.formats import NotACheckpointError
from .weights.io import _looks_like_safetensors, load_torch_file

__all__ = ["CheckpointError", "TrainCheckpoint", "read_checkpoint", "validate", "check_matches", "load_checkpoint"]

_REQUIRED_META = {"model_name": str, "num_classes": int}
_WHERE = "train.py writes them to <run dir>/checkpoints/ (last.ckpt, best-*.ckpt)"


class CheckpointError(ValueError):
    """The file is not a usable train.py checkpoint; the message names it and says what to do."""


@dataclass(frozen=True)
class TrainCheckpoint:
    """A validated train.py checkpoint.

    Attributes:
        path: the file read.
        meta: the ``zoo`` entry: ``model_name``, ``num_classes``, ``class_names`` (list or None),
            ``data_config`` (dict, possibly empty), ``model_kwargs`` (dict).
        raw: the whole loaded dict (optimizer, loops, callbacks: what resume needs).
    """

    path: str
    meta: dict
    raw: dict

    @property
    def has_ema(self) -> bool:
        return isinstance(self.raw.get("ema_state_dict"), Mapping)

    def weights(self, use_ema: bool = False) -> dict[str, torch.Tensor]:
        """The model's state dict in zoo names: the trained weights, or with ``use_ema`` the EMA's.

        Raises:
            CheckpointError: ``use_ema`` and the run kept no EMA.
        """
        return model_weights(self.raw, self.path, use_ema=use_ema)


def _strip(sd: Mapping, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and isinstance(v, torch.Tensor)}


def model_weights(ckpt: Mapping, source: str = "checkpoint", *, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The model's weights in a loaded train.py checkpoint dict (see :meth:`TrainCheckpoint.weights`)."""
    if use_ema:
        ema = ckpt.get("ema_state_dict")
        if not isinstance(ema, Mapping):
            raise CheckpointError(f"{source} has no EMA weights (it was trained with module.ema=null); "
                                  "evaluate its trained weights instead (use_ema=false / ema=false).")
        return _strip(ema, "module.")  # ModelEmaV3 keeps the copy as its submodule ``module``
    return _strip(ckpt["state_dict"], "model.")  # the LightningModule holds the model as ``model``


def validate(ckpt: object, source: str = "checkpoint") -> dict:
    """Check a loaded object is a train.py checkpoint; return its ``zoo`` entry with defaults filled in.

    Raises:
        CheckpointError: no ``zoo`` entry, missing fields, or no model weights.
    """
    meta = ckpt.get("zoo") if isinstance(ckpt, Mapping) else None
    if not isinstance(meta, Mapping):
        raise CheckpointError(
            f"{source} is not a zoo train.py checkpoint (no 'zoo' entry); {_WHERE}. To start from the "
            "weights of another file, pass it as pretrained=<path> instead."
        )
    bad = [k for k, t in _REQUIRED_META.items() if not isinstance(meta.get(k), t)]
    if bad:
        raise CheckpointError(f"{source}: the 'zoo' entry lacks {bad} (has {sorted(meta)}); the file is damaged "
                              "or from an incompatible zoo version. Use another checkpoint of the run.")
    sd = ckpt.get("state_dict")
    if not isinstance(sd, Mapping) or not any(k.startswith("model.") for k in sd):
        raise CheckpointError(f"{source} holds no model weights (no 'model.*' keys in 'state_dict'); "
                              "the file is damaged. Use another checkpoint of the run.")
    return {"model_name": meta["model_name"], "num_classes": meta["num_classes"],
            "class_names": list(meta["class_names"]) if meta.get("class_names") is not None else None,
            "data_config": dict(meta.get("data_config") or {}), "model_kwargs": dict(meta.get("model_kwargs") or {})}


def read_checkpoint(path: str | os.PathLike) -> TrainCheckpoint:
    """Read and validate a train.py checkpoint.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError (a ValueError): empty, truncated, not a torch file, a plain weights file,
            or not written by train.py; each message names the file and what to do.
        zoo.weights.UnsafeCheckpointError: a pickle that would run code (it was not run).
    """
    p = Path(path)
    src = repr(str(p))
    if not p.is_file():
        raise FileNotFoundError(f"Checkpoint {src} does not exist; {_WHERE}.")
    if p.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {src} is empty (0 bytes): the run was probably killed while saving "
                              "it. Use another checkpoint of the run (best-*.ckpt, or an earlier step's).")
    if _looks_like_safetensors(p):
        raise CheckpointError(f"{src} is a safetensors weights file, not a train.py checkpoint; "
                              "pass it as pretrained=<path> to start from its weights.")
    try:
        ckpt = load_torch_file(p)
    except NotACheckpointError as e:
        if e.truncated:
            raise CheckpointError(f"Checkpoint {src} is not readable: it is {e.reason}. Use another checkpoint of "
                                  "the run (best-*.ckpt, or an earlier step's); a copy cut short (disk full, "
                                  "killed while saving) looks like this.") from None
        raise CheckpointError(f"Checkpoint {src} is not a torch file: it is {e.reason}; {_WHERE}.") from None
    meta = validate(ckpt, src)
    return TrainCheckpoint(str(p), meta, ckpt)


def check_matches(meta: Mapping, *, model_name: str, num_classes: int, model_kwargs: Mapping | None = None,
                  source: str = "checkpoint") -> None:
    """Raise a ``CheckpointError`` when a checkpoint's model is not the one a run builds (resume)."""
    mine = (model_name, num_classes, dict(model_kwargs or {}))
    theirs = (meta["model_name"], meta["num_classes"], dict(meta.get("model_kwargs") or {}))
    if mine != theirs:
        raise CheckpointError(
            f"{source} is for model {theirs[0]!r} ({theirs[1]} classes, kwargs {theirs[2]}) but this run "
            f"builds {mine[0]!r} ({mine[1]} classes, kwargs {mine[2]}). Use the same model= and data=, "
            "or pass the file as pretrained= to fine-tune from it."
        )


def load_weights_into(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load a train.py checkpoint's weights strictly, rebuilding retrofit gates it was saved with."""
    from .compress.prune import match_heads
    from .weights import retrofit
    from .weights.loading import load_state_dict_into

    gated = retrofit.gated_prefixes(sd, model)
    if gated:  # trained from a plain backbone: the attention blocks sit in ResidualGate wrappers
        retrofit.wrap_gates(model, gated)
    match_heads(model, sd)  # fine-tuned after zoo.compress.prune_heads: the blocks have fewer heads
    load_state_dict_into(model, sd, source=source, adapt=False)


def load_checkpoint(path: str | os.PathLike, *, use_ema: bool = False,
                    model_name: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model a train.py checkpoint holds.

    Args:
        path: the checkpoint.
        use_ema: load the EMA weights instead of the trained ones (an error if the run kept none).
        model_name: when given, must be the checkpoint's model (a clear error otherwise).

    Returns:
        ``(model in eval mode, meta)``; ``meta`` as :attr:`TrainCheckpoint.meta`.
    """
    from .builder import create

    ckpt = read_checkpoint(path)
    meta = ckpt.meta
    if model_name and model_name != meta["model_name"]:
        raise CheckpointError(f"model={model_name!r} but the checkpoint holds {meta['model_name']!r}; "
                              "drop model= or match it.")
    model = create(meta["model_name"], num_classes=meta["num_classes"], **meta["model_kwargs"])
    load_weights_into(model, ckpt.weights(use_ema), repr(ckpt.path) + (" (EMA weights)" if use_ema else ""))
    return model.eval(), meta


def restore_ema(ema, ckpt: Mapping, source: str = "checkpoint") -> None:
    """Resume: load a run's EMA (timm ``ModelEmaV3``) from a checkpoint dict; one saved without an
    EMA restarts it from the checkpoint's trained weights, with a warning."""
    if isinstance(ckpt.get("ema_state_dict"), Mapping):
        ema.load_state_dict(ckpt["ema_state_dict"])
        return
    warnings.warn(f"{source} has no EMA weights (saved with module.ema=null); the EMA restarts from its "
                  "trained weights.", stacklevel=2)
    load_weights_into(ema.module, model_weights(ckpt, source), source)
