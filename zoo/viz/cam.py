"""Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization (arXiv:1610.02391)
and gradient-free relatives (Eigen-CAM, arXiv:2008.00299; Score-CAM, arXiv:1910.01279) for any zoo model.

Wraps the ``grad-cam`` package (``pytorch_grad_cam``), choosing the target layer and the
reshape transform per family: CNNs use their last stage, ViT the last block's ``norm1`` (tokens
to a grid, class token dropped), Swin the final norm (``[B, H, W, C]`` to NCHW).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

__all__ = ["CAM_METHODS", "cam_target", "compute_cam"]

# name -> pytorch_grad_cam class name; eigencam and scorecam need no gradient of the target layer.
CAM_METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "scorecam": "ScoreCAM",
}


def _vit_reshape(grid: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    def reshape(t: torch.Tensor) -> torch.Tensor:  # B, 1 + N, C -> B, C, gh, gw
        b, n, c = t.shape
        return t[:, n - grid[0] * grid[1]:].reshape(b, grid[0], grid[1], c).permute(0, 3, 1, 2)

    return reshape


def _nhwc_to_nchw(t: torch.Tensor) -> torch.Tensor:  # B, H, W, C -> B, C, H, W
    return t.permute(0, 3, 1, 2)


def cam_target(model: nn.Module, input_size: tuple[int, int]) -> tuple[list[nn.Module], Callable | None]:
    """The target layers and reshape transform for ``model`` at ``input_size`` ``(H, W)``.

    Raises:
        ValueError: the model's family is not known (pass ``target_layer`` to :func:`compute_cam`).
    """
    from ..models.vit import VisionTransformer

    if isinstance(model, VisionTransformer):
        p = model.patch_size
        grid = (input_size[0] // p[0], input_size[1] // p[1])
        return [model.blocks[-1].norm1], _vit_reshape(grid)
    try:
        from ..models.swin import SwinTransformer
    except ImportError:  # pragma: no cover - swin not importable
        SwinTransformer = ()
    if isinstance(model, SwinTransformer):
        # The last map before pooling, as the CNNs' last stage (v1 and v2 alike).
        return [model.norm], _nhwc_to_nchw
    if hasattr(model, "layer4"):
        return [model.layer4[-1]], None
    raise ValueError(f"No default CAM target layer for {type(model).__name__}; pass target_layer=<module>.")


def compute_cam(
    model: nn.Module,
    x: torch.Tensor,
    method: str = "gradcam",
    *,
    targets: Sequence[int] | None = None,
    target_layer: nn.Module | None = None,
    reshape_transform: Callable | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Class-activation maps of ``model`` for ``x``.

    The model is put in eval mode (``pytorch_grad_cam`` does this) and its hooks are removed after.

    Args:
        model: a zoo classifier.
        x: ``[B, C, H, W]`` normalised input.
        method: a key of :data:`CAM_METHODS`.
        targets: class index per sample; None uses the predicted class.
        target_layer: override of the automatic choice (then ``reshape_transform`` too if needed).
        reshape_transform: activation -> NCHW, for ``target_layer``.
        batch_size: Score-CAM's masked-input batch.

    Returns:
        ``[B, H, W]`` float32 in [0, 1] (each map min-max scaled), at the input resolution.
    """
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method not in CAM_METHODS:
        raise ValueError(f"Unknown CAM method {method!r}; choose from {sorted(CAM_METHODS)}.")
    if target_layer is None:
        layers, reshape = cam_target(model, tuple(x.shape[-2:]))
    else:
        layers, reshape = [target_layer], reshape_transform
    cls = getattr(pytorch_grad_cam, CAM_METHODS[method])
    tgt = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
    with cls(model=model, target_layers=layers, reshape_transform=reshape) as cam:
        if method == "scorecam":
            cam.batch_size = batch_size
        # Grad-CAM needs gradients even when the caller is in no_grad.
        with torch.enable_grad():
            out = cam(input_tensor=x, targets=tgt)
    return np.asarray(out, dtype=np.float32)
