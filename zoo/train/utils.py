"""Helpers for the entry points: precision, model config nodes; checkpoints are read by zoo.checkpoint."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..checkpoint import read_checkpoint as read_zoo_checkpoint  # the one reader; name kept for train.py

__all__ = ["resolve_precision", "bf16_fast", "register_model_configs", "model_family", "read_zoo_checkpoint"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
MODEL_TARGET = "zoo.train.build_model"  # what every model node instantiates


def bf16_fast(accelerator: str = "auto") -> bool:
    """Whether this hardware runs bf16 matmuls natively: CUDA with bf16, or a CPU with AMX / AVX512-BF16."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if accelerator in ("cpu", "auto"):
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            flags = ""
        return bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", flags))
    return False


def resolve_precision(precision, accelerator: str = "auto"):
    """``"auto"`` -> ``"bf16-mixed"`` where bf16 is fast (see :func:`bf16_fast`), else ``"32-true"``."""
    if str(precision) != "auto":
        return precision
    return "bf16-mixed" if bf16_fast(accelerator) else "32-true"


def model_family(name: str) -> str:
    """``swin`` / ``vit`` / ``resnet`` / ... from a registered name (``cbam_resnet18`` -> ``resnet``)."""
    for fam, keys in (("swin", ("swin",)), ("vit", ("vit",)), ("resnet", ("resnet", "resnext"))):
        if any(k in name for k in keys):
            return fam
    return name.split("_")[0]


def register_model_configs() -> list[str]:
    """Store a node ``{_target_: zoo.train.build_model, name, num_classes, kwargs}`` in Hydra's group
    ``model`` for every registered model.

    So ``model=<any name>`` works without a yaml per model; ``instantiate(cfg.model, num_classes=10)``
    builds it, and architecture overrides go under ``kwargs`` (``+model.kwargs.depth=6``). A node
    inherits its family's settings from ``configs/model/_family/<family>.yaml`` when that file
    exists. A hand-written
    ``configs/model/<name>.yaml`` wins: no node is stored for its name (Hydra would otherwise merge
    the two as a "schema").
    """
    from hydra.core.config_store import ConfigStore

    import zoo

    cs = ConfigStore.instance()
    names = zoo.list_models()
    for name in names:
        if (CONFIG_DIR / "model" / f"{name}.yaml").is_file():
            continue
        fam = model_family(name)
        defaults = [f"_family/{fam}@_here_"] if (CONFIG_DIR / "model" / "_family" / f"{fam}.yaml").is_file() else []
        cs.store(group="model", name=name, node={"defaults": [*defaults, "_self_"], "_target_": MODEL_TARGET,
                                                   "name": name, "num_classes": None, "kwargs": {}})
    return names
