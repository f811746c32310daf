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
    "WeightSource",
    "classifier_name",
    "find_source",
    "kwargs_for_entry",
    "load_file_into",
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
    classifier_mismatch: list[str] = field(default_factory=list)  # "fc.weight (1000, 512) vs (2, 512)": why re-initialised
    cfg: object = None  # the catalog entry (zoo.weights.catalog.PretrainedCfg) when loaded from one


def classifier_name(model: nn.Module) -> str | None:
    """Module name of the model's classifier (``"fc"``, ``"head"``), None when it declares none.

    The name the builder recorded in ``model.pretrained_cfg["classifier"]`` wins; otherwise it is
    found as the module ``model.get_classifier()`` returns (an ``nn.Identity`` for num_classes=0
    still has its name, so a checkpoint's classifier is recognised for a headless model too).
    """
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("classifier"):
        return cfg["classifier"]
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is None:
        return None
    return next((n for n, m in model.named_modules() if m is head and n), None)


def classifier_keys(model: nn.Module) -> set[str]:
    """State-dict names under the model's classifier (empty when it has none or is an identity)."""
    name = classifier_name(model)
    return {k for k in model.state_dict() if k.startswith(name + ".")} if name else set()


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
    adapt: bool = True,
) -> LoadReport:
    """Load an already-converted state dict, adapting the classifier and first conv.

    Args:
        model: the zoo model.
        state_dict: weights in zoo names.
        source: shown in messages.
        allow_new: predicate for model keys that may be absent from the checkpoint because they are
            initialised by design (e.g. attention blocks retrofitted into a plain backbone).
        adapt: re-initialise a classifier of another size and adapt the first conv to ``in_chans``;
            False loads every key as is (a training checkpoint into the model it was saved from).

    Raises:
        CheckpointMismatchError: listing missing, unexpected and shape-mismatched keys.
    """
    report = LoadReport(source)
    own = model.state_dict()
    sd = dict(state_dict)
    head_name = classifier_name(model) if adapt else None
    head = classifier_keys(model) if adapt else set()

    # Classifier of another size (or none at all): keep the model's fresh head, say so.
    ckpt_head = {k for k in sd if k.startswith(head_name + ".")} if head_name else set()
    if head or ckpt_head:
        mismatch = [k for k in ckpt_head if k not in own or own[k].shape != sd[k].shape]
        if mismatch:
            report.classifier_mismatch = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape) if k in own else 'none'}"
                                          for k in sorted(mismatch)]
            for k in ckpt_head:
                sd.pop(k)
            report.reinitialized = sorted(head)
            warnings.warn(
                f"{source}: classifier does not match this model ({_fmt(mismatch)}); "
                f"re-initialised {_fmt(head) or 'nothing (num_classes=0)'}.",
                stacklevel=3,
            )

    conv = _first_conv_key(model) if adapt else None
    if conv and conv in sd and sd[conv].ndim == 4 and own[conv].ndim == 4:
        cw, ow = sd[conv], own[conv]
        if cw.shape[1] != ow.shape[1] and cw.shape[0] == ow.shape[0] and cw.shape[2:] == ow.shape[2:]:
            sd[conv] = _adapt_in_chans(cw.float(), ow.shape[1]).to(cw.dtype)
            report.adapted.append(conv)

    _check_tied(model, sd, source)
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


def _check_tied(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Keys the model ties to one tensor (a ViT built with ``share_layers``) must hold equal values:
    otherwise the last one would silently win."""
    first: dict[int, str] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        k0 = first.setdefault(id(v), k)
        if k0 != k and k0 in sd and k in sd and sd[k0].shape == sd[k].shape and not torch.equal(sd[k0], sd[k]):
            raise CheckpointMismatchError(
                f"{source}: the model ties {k} to {k0} (shared layers) but the checkpoint holds different "
                f"values for them: it was saved from a model without that sharing (build it with the same "
                f"share_layers).")


@dataclass(frozen=True)
class WeightSource:
    """Where a ``pretrained=`` value points, found without touching the network.

    Attributes:
        path: a local file, or None when the weights are at ``url``.
        url: what to download (through the cache) when ``path`` is None.
        cfg: the catalog entry (zoo.weights.catalog.PretrainedCfg), or None for an uncatalogued file or URL.
    """

    path: str | None
    url: str | None
    cfg: object = None

    @property
    def name(self) -> str:
        """What messages call these weights: the catalog key, else the path or URL."""
        return self.cfg.name if self.cfg is not None else (self.path or self.url)

    def fetch(self, progress: bool = True) -> str:
        """The local file: ``path``, or ``url`` downloaded (cached, hash-checked)."""
        if self.path is not None:
            return self.path
        from .download import download

        return str(download(self.url, sha256=self.cfg.sha256 if self.cfg else None, progress=progress))


def find_source(source: bool | str | os.PathLike, model_name: str | None = None) -> WeightSource:
    """Turn a ``pretrained=`` value into a :class:`WeightSource`, looking the catalog up once.

    ``source`` may be True (the architecture's default tag), a tag (``"tv2_in1k"``), a catalog key
    (``"resnet50.tv2_in1k"``, possibly of another architecture, e.g. to retrofit attention), a URL
    (``https://``, ``http://``, ``file://``) or a local path.

    Raises:
        ValueError: no default weights, or an unknown tag (naming the architecture's tags).
        FileNotFoundError: a path that does not exist.
    """
    from . import catalog as cat

    if source is True:
        cfg = cat.find_entry(model_name or "")
        if cfg is None:
            raise ValueError(_no_weights_message(model_name))
        return WeightSource(None, cfg.url, cfg)
    s = os.fspath(source)
    if os.path.exists(s):
        return WeightSource(s, None, None)
    cfg = cat.entry_for(model_name, s)
    if re.match(r"^(https?|file)://", s):
        return WeightSource(None, s, cfg)
    if cfg is None:
        if os.sep in s or "/" in s or os.path.splitext(s)[1] in (".pth", ".pt", ".bin", ".ckpt", ".safetensors"):
            raise FileNotFoundError(f"Checkpoint {s!r} does not exist or is not a file.")
        tags = [c.split(".", 1)[1] for c in cat.list_pretrained(model_name or "")] if model_name else []
        raise ValueError(
            f"pretrained={s!r} is neither a file, a URL nor a catalog tag"
            + (f" of {model_name!r} (its tags: {tags})" if tags else "")
            + ". See zoo.list_pretrained()."
        )
    return WeightSource(None, cfg.url, cfg)


def resolve_source(source: bool | str | os.PathLike, model_name: str | None = None, *, progress: bool = True):
    """``(local path, catalog entry or None)`` for a ``pretrained=`` value, downloading if needed
    (:func:`find_source`, then :meth:`WeightSource.fetch`)."""
    src = find_source(source, model_name)
    return src.fetch(progress), src.cfg


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


def kwargs_for_entry(cfg, kwargs: dict) -> dict:
    """Architecture kwargs a catalog entry implies: a Swin v2 checkpoint loaded into another
    ``window_size`` gets ``pretrained_window_size`` (unless given), as the Swin v2 paper fine-tunes."""
    pws = getattr(cfg, "pretrained_window_size", None)
    ws = kwargs.get("window_size")
    if pws and ws is not None and ws != pws and "pretrained_window_size" not in kwargs:
        return {**kwargs, "pretrained_window_size": pws}
    return kwargs


def pretrained_kwargs(model_name: str, pretrained: bool | str | os.PathLike, kwargs: dict) -> dict:
    """:func:`kwargs_for_entry` for the entry a ``pretrained=`` value names (none for an uncatalogued URL)."""
    from . import catalog as cat

    cfg = None if "://" in str(pretrained) else cat.entry_for(model_name, pretrained)
    return kwargs_for_entry(cfg, kwargs)


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
            ``.pth``/``.pt``/``.bin``/``.ckpt``/``.safetensors`` file (see :func:`find_source`).
        filter_fn: the family's layout converter, ``filter_fn(state_dict, model) -> state_dict``.
        model_name: registered name, for messages and tag lookup.
        allow_new: see :func:`load_state_dict_into`.
        progress: progress bar for downloads.
    """
    src = find_source(source, model_name)
    return load_file_into(model, src.fetch(progress), cfg=src.cfg, filter_fn=filter_fn, model_name=model_name,
                          allow_new=allow_new)


def _declared_new(model: nn.Module, sd: dict) -> set[str]:
    """Model keys absent from ``sd`` that their module declares optional (``new_when_missing``)."""
    out = set()
    for mname, m in model.named_modules():
        for pname in getattr(m, "new_when_missing", ()):
            key = f"{mname}.{pname}" if mname else pname
            if key not in sd:
                out.add(key)
    return out


def load_file_into(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    cfg=None,
    filter_fn: Callable[[dict, nn.Module], dict] | None = None,
    model_name: str | None = None,
    allow_new: Callable[[str], bool] | None = None,
) -> LoadReport:
    """Load the local checkpoint ``path`` (catalog entry ``cfg`` or None) into ``model``.

    When the checkpoint has none of the model's attention blocks (a plain ResNet into
    ``cbam_resnet50``), the blocks are made to start as the identity (:mod:`zoo.weights.retrofit`),
    listed in ``report.retrofitted`` / ``report.new``, and a warning names them.
    """
    from . import retrofit

    path = os.fspath(path)
    sd = read_state_dict(path)
    gated = retrofit.gated_prefixes(sd, model)
    if gated:  # saved from a retrofitted model: rebuild its wrappers so every key has a home
        retrofit.wrap_gates(model, gated)
    from ..compress.prune import match_heads

    match_heads(model, sd)  # saved after zoo.compress.prune_heads: shrink the blocks to its head counts
    if filter_fn is not None:
        sd = filter_fn(sd, model)
    source_name = cfg.name if cfg is not None else path
    declared = _declared_new(model, sd)
    if declared:
        warnings.warn(f"{model_name or type(model).__name__}: {source_name} has no {_fmt(sorted(declared), 4)}; they keep "
                      f"their initial values (model.load_report.new).", stacklevel=3)
        user_declared = allow_new
        allow_new = lambda k: k in declared or bool(user_declared and user_declared(k))  # noqa: E731
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
