"""Load a checkpoint into a zoo model: detect its layout, convert, adapt, and check every key.

The model family's ``filter_fn`` (registered with the model) renames a torchvision, timm or
official layout into zoo names and resamples what depends on resolution or window size. This
module then adapts what is generic to every model (classifier size, input channels) and loads
strictly, listing every missing, unexpected and shape-mismatched key when the file does not fit.
"""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .io import read_state_dict

__all__ = [
    "LoadReport",
    "CheckpointMismatchError",
    "load_pretrained",
    "load_state_dict_into",
    "pretrained_kwargs",
    "resolve_source",
]


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's keys or shapes do not fit the model."""


@dataclass
class LoadReport:
    """What loading did: keys re-initialised (classifier), adapted, or left new by design."""

    source: str
    reinitialized: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    retrofitted: list[str] = field(default_factory=list)  # attention modules new to the checkpoint
    cfg: object = None  # the catalog entry (zoo.weights.catalog.PretrainedCfg) when loaded from one


def classifier_keys(model: nn.Module) -> set[str]:
    """State-dict names of the parameters of ``model.get_classifier()`` (empty when it has none)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is None:
        return set()
    ids = {id(p) for p in head.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _first_conv_key(model: nn.Module) -> str | None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return f"{name}.weight"
    return None


def _adapt_in_chans(w: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a first-conv weight [O, 3, k, k] to ``in_chans`` inputs, preserving activation scale."""
    if in_chans == 1:
        return w.sum(dim=1, keepdim=True)
    reps = -(-in_chans // w.shape[1])
    return w.repeat(1, reps, 1, 1)[:, :in_chans] * (w.shape[1] / in_chans)


def _fmt(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_state_dict_into(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    allow_new: Callable[[str], bool] | None = None,
) -> LoadReport:
    """Load an already-converted state dict, adapting the classifier and first conv.

    Args:
        model: the zoo model.
        state_dict: weights in zoo names.
        source: shown in messages.
        allow_new: predicate for model keys that may be absent from the checkpoint because they are
            initialised by design (e.g. attention blocks retrofitted into a plain backbone).

    Raises:
        CheckpointMismatchError: listing missing, unexpected and shape-mismatched keys.
    """
    report = LoadReport(source)
    own = model.state_dict()
    sd = dict(state_dict)
    head = classifier_keys(model)

    # Classifier of another size (or none at all): keep the model's fresh head, say so.
    ckpt_head = {k for k in sd if k in head or (k not in own and _is_head_like(k, head))}
    if head or ckpt_head:
        mismatch = [k for k in ckpt_head if k not in own or own[k].shape != sd[k].shape]
        if mismatch:
            for k in ckpt_head:
                sd.pop(k)
            report.reinitialized = sorted(head)
            warnings.warn(
                f"{source}: classifier does not match this model ({_fmt(mismatch)}); "
                f"re-initialised {_fmt(head) or 'nothing (num_classes=0)'}.",
                stacklevel=3,
            )

    conv = _first_conv_key(model)
    if conv and conv in sd and sd[conv].ndim == 4 and own[conv].ndim == 4:
        cw, ow = sd[conv], own[conv]
        if cw.shape[1] != ow.shape[1] and cw.shape[0] == ow.shape[0] and cw.shape[2:] == ow.shape[2:]:
            sd[conv] = _adapt_in_chans(cw.float(), ow.shape[1]).to(cw.dtype)
            report.adapted.append(conv)

    missing = [k for k in own if k not in sd and k not in head]
    report.new = sorted(k for k in missing if allow_new and allow_new(k))
    missing = [k for k in missing if k not in report.new]
    unexpected = [k for k in sd if k not in own]
    shape = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or shape:
        parts = [f"{source} does not fit {type(model).__name__}:"]
        if missing:
            parts.append(f"  missing ({len(missing)}): {_fmt(missing)}")
        if unexpected:
            parts.append(f"  unexpected ({len(unexpected)}): {_fmt(unexpected)}")
        if shape:
            parts.append(f"  shape mismatch ({len(shape)}) checkpoint vs model: {_fmt(shape, 6)}")
        parts.append("  Is this a checkpoint of the same architecture (depth, width, attention block)?")
        raise CheckpointMismatchError("\n".join(parts))
    model.load_state_dict(sd, strict=False)
    return report


def _is_head_like(key: str, head: set[str]) -> bool:
    # With num_classes=0 the model has no head keys; recognise the checkpoint's classifier by the
    # module names our models use for it.
    return key.rsplit(".", 1)[0] in {"fc", "head", "head.fc", "classifier"}


def resolve_source(source: bool | str | os.PathLike, model_name: str | None = None, *, progress: bool = True):
    """Turn a ``pretrained=`` value into ``(local path, catalog entry or None)``, downloading if needed.

    ``source`` may be True (the architecture's default tag), a tag (``"tv2_in1k"``), a catalog key
    (``"resnet50.tv2_in1k"``, possibly of another architecture, e.g. to retrofit attention), a URL
    (``https://``, ``http://``, ``file://``) or a local path.
    """
    from . import catalog as cat
    from .download import download

    if source is True:
        cfg = cat.find_entry(model_name or "")
        if cfg is None:
            raise ValueError(_no_weights_message(model_name))
    else:
        s = os.fspath(source)
        if os.path.exists(s):
            return s, None
        cfg = cat.entry_for(model_name, s)
        if re.match(r"^(https?|file)://", s):
            return str(download(s, sha256=cfg.sha256 if cfg else None, progress=progress)), cfg
        if cfg is None:
            if os.sep in s or "/" in s or os.path.splitext(s)[1] in (".pth", ".pt", ".bin", ".ckpt", ".safetensors"):
                raise FileNotFoundError(f"Checkpoint {s!r} does not exist or is not a file.")
            tags = [c.split(".", 1)[1] for c in cat.list_pretrained(model_name or "")] if model_name else []
            raise ValueError(
                f"pretrained={s!r} is neither a file, a URL nor a catalog tag"
                + (f" of {model_name!r} (its tags: {tags})" if tags else "")
                + ". See zoo.list_pretrained()."
            )
    return str(download(cfg.url, sha256=cfg.sha256, progress=progress)), cfg


def _no_weights_message(model_name: str | None) -> str:
    from . import catalog as cat

    msg = f"No published weights are catalogued for {model_name!r}."
    base = (model_name or "").split("_", 1)[-1]
    if base != model_name and cat.find_entry(base) is not None:
        msg += (
            f" To start from a plain {base} and add the attention blocks as an identity, pass "
            f"pretrained={cat.find_entry(base).name!r}."
        )
    return msg + " Or pass pretrained='<path or URL>' to a checkpoint in torchvision, timm, official or zoo layout."


def pretrained_kwargs(model_name: str, pretrained: bool | str | os.PathLike, kwargs: dict) -> dict:
    """Architecture kwargs a catalog entry implies: a Swin v2 checkpoint loaded into another
    ``window_size`` gets ``pretrained_window_size`` (unless given), as the Swin v2 paper fine-tunes."""
    from . import catalog as cat

    cfg = None if "://" in str(pretrained) else cat.entry_for(model_name, pretrained)
    pws = getattr(cfg, "pretrained_window_size", None)
    ws = kwargs.get("window_size")
    if pws and ws is not None and ws != pws and "pretrained_window_size" not in kwargs:
        return {**kwargs, "pretrained_window_size": pws}
    return kwargs


def load_pretrained(
    model: nn.Module,
    source: bool | str | os.PathLike,
    *,
    filter_fn: Callable[[dict, nn.Module], dict] | None = None,
    model_name: str | None = None,
    allow_new: Callable[[str], bool] | None = None,
    progress: bool = True,
) -> LoadReport:
    """Load ``source`` into ``model``, converting its layout; retrofit attention blocks if needed.

    Args:
        model: the zoo model to fill.
        source: True (default catalog tag), a tag or ``arch.tag`` key, a URL, or a local
            ``.pth``/``.pt``/``.bin``/``.ckpt``/``.safetensors`` file (see :func:`resolve_source`).
        filter_fn: the family's layout converter, ``filter_fn(state_dict, model) -> state_dict``.
        model_name: registered name, for messages and tag lookup.
        allow_new: see :func:`load_state_dict_into`.
        progress: progress bar for downloads.

    When the checkpoint has none of the model's attention blocks (a plain ResNet into
    ``cbam_resnet50``), the blocks are made to start as the identity (:mod:`zoo.weights.retrofit`),
    listed in ``report.retrofitted`` / ``report.new``, and a warning names them.
    """
    from . import retrofit

    path, cfg = resolve_source(source, model_name, progress=progress)
    sd = read_state_dict(path)
    gated = retrofit.gated_prefixes(sd)
    if gated:  # saved from a retrofitted model: rebuild its wrappers so every key has a home
        retrofit.wrap_gates(model, gated)
    if filter_fn is not None:
        sd = filter_fn(sd, model)
    source_name = cfg.name if cfg is not None else path
    new_blocks = retrofit.plan_retrofit(model, sd, source_name)
    if new_blocks:
        prefixes = tuple(p + "." for p in new_blocks)
        user_allow = allow_new
        allow_new = lambda k: k.startswith(prefixes) or bool(user_allow and user_allow(k))  # noqa: E731
    report = load_state_dict_into(model, sd, source=source_name, allow_new=allow_new)
    report.cfg = cfg
    if new_blocks:
        report.retrofitted = sorted(new_blocks)
        kinds = sorted(set(new_blocks.values()))
        warnings.warn(
            f"{model_name or type(model).__name__}: {source_name} has no attention weights; retrofitted "
            f"{len(new_blocks)} {'/'.join(kinds)} blocks so the network starts as the backbone: "
            f"{_fmt(report.retrofitted, 4)} ({len(report.new)} new tensors, see model.load_report.new).",
            stacklevel=3,
        )
    return report
