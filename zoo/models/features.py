"""Feature extraction for every zoo backbone: timm's ``features_only`` and ``forward_intermediates``.

A model that can give features declares, at construction, ``feature_info``: one dict per map it can
return (``num_chs``, ``reduction`` = input side / map side, ``module`` = the module producing it),
and implements ``forward_intermediates(x, indices, norm, stop_early, output_fmt,
intermediates_only)`` with timm's signature and meaning. :func:`features_only` wraps such a model in
a :class:`FeatureNet`, whose ``forward`` returns the selected maps as a list of NCHW tensors and
whose ``feature_info`` answers ``channels()``, ``reduction()`` and ``module_names()``.

``zoo.create(name, features_only=True, out_indices=...)`` calls :func:`features_only` after the
model is built and its weights are loaded.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["FeatureInfo", "FeatureNet", "features_only", "feature_take_indices", "check_output_fmt"]

Indices = int | Sequence[int] | None


def feature_take_indices(num_features: int, indices: Indices = None) -> tuple[list[int], int]:
    """Resolve ``indices`` as timm does: the absolute indices to take, and the largest of them.

    Args:
        num_features: how many maps the model can give.
        indices: None for all; an int ``n`` for the last ``n``; a sequence of indices (negative
            ones count from the end).

    Returns:
        ``(take, last)``: indices in ``0 .. num_features - 1`` in the order given, and ``max(take)``.

    Raises:
        ValueError: naming the valid range, for an index or count outside it.
    """
    n = num_features
    valid = f"valid: an int 1..{n} (the last n), or indices in 0..{n - 1} (or -{n}..-1 from the end)"
    if indices is None:
        indices = n
    if isinstance(indices, bool) or not isinstance(indices, (int, Sequence)) or isinstance(indices, str):
        raise TypeError(f"indices must be None, an int or a sequence of ints, got {indices!r}; {valid}.")
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"indices={indices} is out of range for {n} feature maps; {valid}.")
        take = list(range(n - indices, n))
    else:
        if not indices:
            raise ValueError(f"indices is empty; {valid}.")
        take = []
        for i in indices:
            j = None if isinstance(i, bool) else _as_int(i)
            if j is None:
                raise ValueError(f"feature index {i!r} is not an integer; {valid}.")
            if not -n <= j < n:
                raise ValueError(f"feature index {i!r} is out of range for {n} feature maps; {valid}.")
            take.append(j % n)
    return take, max(take)


def _as_int(i) -> int | None:
    try:
        return operator.index(i)  # ints, numpy and 0-d torch integers; not floats
    except TypeError:
        return None


def check_output_fmt(output_fmt: str, allowed: Sequence[str], model: str) -> None:
    """Raise a ``ValueError`` naming ``allowed`` when ``output_fmt`` is not one of them."""
    if output_fmt not in allowed:
        raise ValueError(f"{model} gives intermediates as {' or '.join(map(repr, allowed))}, not {output_fmt!r}.")


class FeatureInfo:
    """What each selected feature map is: channels, reduction and producing module.

    Args:
        info: the model's ``feature_info``, one dict per map it can give.
        out_indices: the selected maps, indices into ``info``.

    Accessors take an optional ``idx`` (a position among the selected maps) and otherwise return
    one value per selected map, as timm's ``FeatureInfo``.
    """

    def __init__(self, info: Sequence[dict], out_indices: Sequence[int]):
        self.info = [dict(d) for d in info]
        self.out_indices = tuple(out_indices)

    def get(self, key: str, idx: int | None = None):
        if idx is not None:
            return self.info[self.out_indices[idx]][key]
        return [self.info[i][key] for i in self.out_indices]

    def channels(self, idx: int | None = None):
        """Channels of each selected map (``[B, C, H, W]``'s ``C``)."""
        return self.get("num_chs", idx)

    def reduction(self, idx: int | None = None):
        """Input side over map side of each selected map (2, 4, ... 32; 16 for ViT-B/16)."""
        return self.get("reduction", idx)

    def module_names(self, idx: int | None = None):
        """Names (in the wrapped model) of the modules producing each selected map."""
        return self.get("module", idx)

    module_name = module_names  # timm's spelling

    def get_dicts(self) -> list[dict]:
        return [dict(self.info[i], index=i) for i in self.out_indices]

    def __getitem__(self, idx: int) -> dict:
        return dict(self.info[self.out_indices[idx]], index=self.out_indices[idx])

    def __len__(self) -> int:
        return len(self.out_indices)

    def __iter__(self):
        return iter(self.get_dicts())

    def __repr__(self) -> str:
        return f"FeatureInfo({self.get_dicts()})"


def _describe(info: Sequence[dict]) -> str:
    return ", ".join(f"{i}: {d['module']} ({d['num_chs']} ch, /{d['reduction']})" for i, d in enumerate(info))


class FeatureNet(nn.Module):
    """A backbone that returns feature maps: ``forward(x)`` -> list of ``[B, C_i, H / r_i, W / r_i]``.

    The wrapped model's ``forward_intermediates`` computes the maps (``stop_early``: nothing after
    the deepest selected map runs). With ``prune`` (the default, as timm) the model is modified in
    place: its classifier and every stage after the deepest selected map are removed, and so is
    its final norm unless ``norm``, so that no parameter goes unused in training.

    Args:
        model: a zoo model with ``feature_info`` and ``forward_intermediates``.
        out_indices: which maps (indices into ``model.feature_info``): None for the model's
            default (``model.default_out_indices``: timm's ``features_only`` default, capped at the
            number of maps), an int ``n``
            for the last ``n``, or a sequence (negative counts from the end). Maps come out in
            forward order, whatever the order given.
        norm: apply the model's final norm to the maps where it fits (ViT: every block; Swin:
            the last stage; ResNet has none).
        prune: remove what the selected maps do not need.

    Attributes:
        feature_info: :class:`FeatureInfo` of the selected maps.
        out_indices: tuple of the selected indices.
    """

    def __init__(self, model: nn.Module, out_indices: Indices = None, *, norm: bool = False, prune: bool = True):
        super().__init__()
        name = type(model).__name__
        missing = [a for a in ("feature_info", "forward_intermediates") if not hasattr(model, a)]
        if missing:
            raise TypeError(
                f"{name} cannot give feature maps: it has no {' and no '.join(missing)}. A model needs a "
                "feature_info list (num_chs, reduction, module per map) and forward_intermediates(x, indices, "
                "norm, stop_early, output_fmt, intermediates_only); zoo's ResNet, VisionTransformer and "
                "SwinTransformer (v1, v2) have both."
            )
        info = list(model.feature_info)
        if out_indices is None:
            out_indices = getattr(model, "default_out_indices", None)
            if isinstance(out_indices, int):
                out_indices = min(out_indices, len(info))  # "the last 3" of a 2-block ViT: both
        try:
            take, _ = feature_take_indices(len(info), out_indices)
        except ValueError as e:
            raise ValueError(f"out_indices for {name}: {e} Its feature maps are {_describe(info)}.") from None
        take = sorted(set(take))  # forward_intermediates gives the maps in forward order
        if prune and hasattr(model, "prune_intermediate_layers"):
            model.prune_intermediate_layers(take, prune_norm=not norm, prune_head=True)
        self.model = model
        self.out_indices = tuple(take)
        self.norm = norm
        self.feature_info = FeatureInfo(info, take)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[B, in_chans, H, W]`` -> one ``[B, channels()[i], H / reduction()[i], W / reduction()[i]]``
        map per selected index (sides rounded as the model rounds them)."""
        return self.model.forward_intermediates(
            x, indices=list(self.out_indices), norm=self.norm, stop_early=True, output_fmt="NCHW",
            intermediates_only=True,
        )


def features_only(model: nn.Module, out_indices: Indices = None, *, norm: bool = False, prune: bool = True) -> FeatureNet:
    """Wrap ``model`` so that ``forward`` returns its feature maps; see :class:`FeatureNet`.

    >>> net = features_only(zoo.create("resnet50"), out_indices=(1, 2, 3, 4))
    >>> net.feature_info.channels(), net.feature_info.reduction()
    ([256, 512, 1024, 2048], [4, 8, 16, 32])
    """
    return FeatureNet(model, out_indices, norm=norm, prune=prune)
