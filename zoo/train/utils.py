"""Helpers for the entry points: precision, model config nodes; checkpoints are read by zoo.checkpoint."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..checkpoint import read_checkpoint as read_zoo_checkpoint  # the one reader; name kept for train.py

__all__ = ["resolve_precision", "bf16_fast", "register_model_configs", "model_family", "read_zoo_checkpoint",
           "check_numbers", "TRAIN_NUMBERS", "EVAL_NUMBERS", "refuse_reinitialized_head", "process_settings"]

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
    """The model file a registered name lives in: ``cbam_resnet18`` -> ``resnet``, ``swin_v2_t`` -> ``swin``.

    By file, not by name: ``efficientvit_b0`` is not a ``vit`` and ``seresnext26ts`` (timm's ByobNet) not
    a zoo ``resnet``; each would otherwise inherit settings (``img_size``) its constructor does not take.
    """
    from zoo.registry import get_model_entry

    return get_model_entry(name).fn.__module__.rsplit(".", 1)[-1]


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


# Config values that must be numbers, checked before anything runs: Lightning would otherwise fail deep
# inside Trainer.__init__ with "'>' not supported between instances of 'int' and 'str'". "int": a whole
# number; "float": any number; "batches": a number of batches (int) or a fraction of them (float).
TRAIN_NUMBERS = {
    "seed": "int",
    **{f"trainer.{k}": "int" for k in ("max_epochs", "min_epochs", "max_steps", "min_steps", "num_nodes",
                                       "accumulate_grad_batches", "check_val_every_n_epoch", "log_every_n_steps",
                                       "num_sanity_val_steps")},
    "trainer.gradient_clip_val": "float",
    **{f"trainer.{k}": "batches" for k in ("limit_train_batches", "limit_val_batches", "limit_test_batches",
                                           "limit_predict_batches", "val_check_interval", "overfit_batches")},
}
EVAL_NUMBERS = {"seed": "int", "viz.num_images": "int"}
_KIND = {"int": ("a whole number", "10"), "float": ("a number", "1.0"),
         "batches": ("a number of batches (10) or a fraction of them (0.25)", "10")}


def check_numbers(cfg, keys: dict[str, str], source: str) -> None:
    """Raise a ``ValueError`` naming the key, its value and the fix when a number in ``cfg`` is not one.

    Args:
        cfg: the composed config (an OmegaConf DictConfig or a dict).
        keys: dotted key -> ``"int"``, ``"float"`` or ``"batches"`` (see :data:`TRAIN_NUMBERS`); absent or
            null keys are skipped.
        source: where the value is set, for the message (``"configs/trainer/<name>.yaml"``).
    """
    from omegaconf import OmegaConf

    for key, kind in keys.items():
        value = OmegaConf.select(cfg, key, default=None) if not isinstance(cfg, dict) else _select(cfg, key)
        if value is None:
            continue
        ok = {"int": (int,), "float": (int, float), "batches": (int, float)}[kind]
        if isinstance(value, bool) or not isinstance(value, ok):
            what, example = _KIND[kind]
            raise ValueError(f"{key}={value!r} is not {what}. Set it on the command line ({key}={example}) or in "
                             f"{source}.")


def _select(d: dict, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def refuse_reinitialized_head(model, num_classes: int) -> None:
    """Refuse to evaluate weights whose classifier had to be re-initialised: its scores would be chance.

    Raises:
        ValueError: naming the weights, the classifier's shapes and the two ways out.
    """
    report = getattr(model, "load_report", None)
    if report is None or not report.reinitialized:
        return
    shapes = ", ".join(report.classifier_mismatch) or ", ".join(report.reinitialized)
    raise ValueError(
        f"pretrained={report.source}: its classifier does not fit the {num_classes} classes of this dataset "
        f"(checkpoint vs model: {shapes}), so it would be evaluated with a freshly initialised head, at chance. "
        "Evaluate it on data with the classes it was trained for, or fine-tune it first (python train.py "
        "model=<name> pretrained=<weights> data=<this data>) and evaluate that run (eval.py ckpt_path=<run>/"
        "checkpoints/last.ckpt)."
    )


def process_settings(cfg) -> bool:
    """Process-wide settings of a ``train.py`` / ``eval.py`` run: ``keep_freed_memory`` (see
    ``zoo/accel/allocator.py``). Returns whether the allocator setting was applied."""
    if not cfg.get("keep_freed_memory", False):
        return False
    from ..accel.allocator import keep_freed_memory

    return keep_freed_memory()
