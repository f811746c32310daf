"""The pretrained-weight catalog: the YAML files in the top-level ``weights/`` folder, read once.

One entry per published checkpoint, keyed ``arch.tag`` (``resnet50.tv2_in1k``); an architecture's
first entry is its default. The files ship inside the package as ``zoo/weights/catalog_data``
(pyproject ``package-dir`` mapping) and are read from the source tree in a checkout.
"""
from __future__ import annotations

import fnmatch
import functools
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

__all__ = [
    "PretrainedCfg",
    "catalog",
    "catalog_dir",
    "list_pretrained",
    "pretrained_cfg",
    "entry_for",
    "find_entry",
    "class_names",
    "validate_entry",
]

LAYOUTS = ("torchvision", "timm", "official", "zoo")
FORMATS = ("pth", "safetensors")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
_REQUIRED = (
    "url", "sha256", "format", "layout", "license", "upstream", "num_classes", "class_names", "input_size",
    "interpolation", "crop_pct", "mean", "std", "top1", "top5", "metrics_source",
)
_OPTIONAL = ("pretrained_window_size", "notes")


@dataclass(frozen=True)
class PretrainedCfg:
    """One published checkpoint and how to preprocess images for it.

    Attributes:
        name: ``arch.tag`` key, e.g. ``"swin_t.tv_in1k"``.
        arch: registered model name (``"swin_t"``); tag: the part after the first dot.
        url: where the publisher hosts the file.
        sha256: full sha256 hex digest, or the prefix a publisher embeds in file names
            (torchvision ``resnet50-11ad3fa6.pth`` -> ``"11ad3fa6"``); None: recorded on first download.
        format: ``"pth"`` or ``"safetensors"``; layout: ``torchvision|timm|official|zoo`` key names.
        input_size: ``(C, H, W)`` the weights were evaluated at; interpolation, crop_pct, mean, std:
            the evaluation transform (resize to ``H / crop_pct``, centre-crop ``H``).
        top1, top5: reported ImageNet-1k val accuracy (%), metrics_source: where it is reported.
        class_names: file (in the catalog folder) with one class name per line, index order.
        pretrained_window_size: Swin v2 only, the window the checkpoint was trained with.
    """

    name: str
    arch: str
    tag: str
    url: str
    sha256: str | None
    format: str
    layout: str
    license: str
    upstream: str
    num_classes: int
    class_names: str
    input_size: tuple[int, int, int]
    interpolation: str
    crop_pct: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    top1: float | None
    top5: float | None
    metrics_source: str | None
    pretrained_window_size: int | None = None
    notes: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def is_default(self) -> bool:
        """True when this is the first (default) tag of its architecture."""
        return next(iter(_arch_index().get(self.arch, [])), None) == self.name


def catalog_dir() -> Path:
    """The folder holding the catalog YAML files (installed package data, else the checkout's ``weights/``)."""
    here = Path(__file__).resolve().parent
    for cand in (here / "catalog_data", here.parents[1] / "weights"):
        if (cand / "imagenet1k_classes.txt").is_file():
            return cand
    raise FileNotFoundError(
        f"zoo's weight catalog is missing: looked in {here / 'catalog_data'} and {here.parents[1] / 'weights'}. "
        "Reinstall the package (pip install attention-zoo) or run from a full checkout."
    )


def validate_entry(name: str, raw: dict) -> list[str]:
    """Problems with one raw YAML entry (empty list when it is valid)."""
    errs = []
    if not re.fullmatch(r"[a-z0-9_]+\.[a-z0-9_]+", name):
        errs.append("key must be 'arch.tag' in lower-case letters, digits and underscores")
    missing = [k for k in _REQUIRED if k not in raw]
    unknown = [k for k in raw if k not in _REQUIRED + _OPTIONAL]
    if missing:
        errs.append(f"missing fields {missing}")
    if unknown:
        errs.append(f"unknown fields {unknown}")
    if missing:
        return errs
    if not str(raw["url"]).startswith("https://"):
        errs.append("url must be https://")
    sha = raw["sha256"]
    if sha is not None and not re.fullmatch(r"[0-9a-f]{8,64}", str(sha)):
        errs.append("sha256 must be null or 8-64 lower-case hex digits (a full digest or a published prefix)")
    if raw["format"] not in FORMATS:
        errs.append(f"format must be one of {FORMATS}")
    if raw["layout"] not in LAYOUTS:
        errs.append(f"layout must be one of {LAYOUTS}")
    if raw["interpolation"] not in INTERPOLATIONS:
        errs.append(f"interpolation must be one of {INTERPOLATIONS}")
    size = raw["input_size"]
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(s, int) and s > 0 for s in size)):
        errs.append("input_size must be [C, H, W]")
    if not (isinstance(raw["crop_pct"], float) and 0.5 <= raw["crop_pct"] <= 1.0):
        errs.append("crop_pct must be a float in [0.5, 1]")
    for k in ("mean", "std"):
        v = raw[k]
        if not (isinstance(v, list) and len(v) == (size[0] if isinstance(size, list) else 3)):
            errs.append(f"{k} must have one value per input channel")
    for k in ("top1", "top5"):
        if raw[k] is not None and not (0 < raw[k] <= 100):
            errs.append(f"{k} must be a percentage")
    if raw["top1"] is not None and not raw["metrics_source"]:
        errs.append("metrics_source must say where top1/top5 are reported")
    if not (isinstance(raw["num_classes"], int) and raw["num_classes"] > 0):
        errs.append("num_classes must be a positive int")
    return errs


@functools.cache
def catalog() -> dict[str, PretrainedCfg]:
    """Every catalog entry, in file order (``resnet.yaml``, ``swin.yaml``, ``vit.yaml``, ...)."""
    out: dict[str, PretrainedCfg] = {}
    for path in sorted(catalog_dir().glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        for name, raw in data.items():
            errs = validate_entry(name, raw or {})
            if errs:
                raise ValueError(f"{path.name}: entry {name!r}: " + "; ".join(errs))
            if name in out:
                raise ValueError(f"{path.name}: entry {name!r} is defined twice in the catalog.")
            arch, tag = name.split(".", 1)
            vals = dict(raw)
            for k in ("input_size", "mean", "std"):
                vals[k] = tuple(vals[k])
            out[name] = PretrainedCfg(name=name, arch=arch, tag=tag, **vals)
    return out


@functools.cache
def _arch_index() -> dict[str, list[str]]:
    idx: dict[str, list[str]] = {}
    for name, cfg in catalog().items():
        idx.setdefault(cfg.arch, []).append(name)
    return idx


def list_pretrained(pattern: str = "*") -> list[str]:
    """Catalog keys (``arch.tag``) matching an fnmatch ``pattern``, in catalog order.

    A pattern without a dot also matches by architecture: ``"resnet50"`` lists every ResNet-50 tag.
    Comma-separated patterns are allowed (``"swin_t*,vit_b_16*"``).
    """
    pats = [p.strip() for p in pattern.split(",") if p.strip()] or ["*"]
    out = []
    for name, cfg in catalog().items():
        if any(fnmatch.fnmatchcase(name, p) or ("." not in p and fnmatch.fnmatchcase(cfg.arch, p)) for p in pats):
            out.append(name)
    return out


def find_entry(arch: str, tag: str | bool | None = None) -> PretrainedCfg | None:
    """The entry for ``arch`` with ``tag`` (a bare tag or a full ``arch.tag``); the default tag when
    ``tag`` is True/None. None when nothing matches."""
    if isinstance(tag, str) and "." in tag:
        return catalog().get(tag)
    if tag in (None, True):
        names = _arch_index().get(arch, [])
        return catalog()[names[0]] if names else None
    return catalog().get(f"{arch}.{tag}")


def entry_for(model_name: str | None, pretrained) -> PretrainedCfg | None:
    """The catalog entry a ``zoo.create(model_name, pretrained=...)`` value names, or None.

    True: the architecture's default tag; a tag or ``arch.tag`` key; a catalogued URL. A local
    path, an uncatalogued URL or an unknown tag: None.
    """
    if pretrained is True:
        return find_entry(model_name or "")
    if not isinstance(pretrained, str) or not pretrained or os.path.exists(pretrained):
        return None
    if "://" in pretrained:
        return next((c for c in catalog().values() if c.url == pretrained), None)
    return catalog().get(pretrained) or (find_entry(model_name, pretrained) if model_name else None)


def pretrained_cfg(name_or_tag: str) -> PretrainedCfg | None:
    """The catalog entry for a model name (its default tag) or an ``arch.tag`` key; None if none.

    >>> pretrained_cfg("swin_t").name
    'swin_t.tv_in1k'
    >>> pretrained_cfg("resnet50.tv_in1k").crop_pct
    0.875
    """
    if name_or_tag in catalog():
        return catalog()[name_or_tag]
    return find_entry(name_or_tag)


@functools.cache
def class_names(file: str = "imagenet1k_classes.txt") -> tuple[str, ...]:
    """Class names, index order, from a list file in the catalog folder."""
    return tuple(line for line in (catalog_dir() / file).read_text().splitlines() if line)
