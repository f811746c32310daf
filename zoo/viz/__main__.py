"""``python -m zoo.viz ckpt_path=<ckpt> image=<file or folder>`` (or ``model=<name>``): attention pictures.

Composes configs/viz.yaml, loads the model (from a train.py checkpoint or by name), preprocesses
the images as evaluation does, and writes the PNGs and ``index.html`` (zoo.viz.plot.visualize).
"""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from zoo.train import register_model_configs

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")

register_model_configs()


def viz(cfg: DictConfig) -> Path:
    """Run one visualisation described by ``cfg``; returns the path of ``index.html``."""
    from zoo.viz.load import list_images, load_images, load_model
    from zoo.viz.plot import visualize

    model_cfg = cfg.get("model") or {}  # no model group (the README's ckpt_path= form): a plain {}
    kwargs = model_cfg.get("kwargs")
    model, info = load_model(
        model_cfg.get("name"),
        ckpt_path=cfg.ckpt_path,
        pretrained=cfg.pretrained,
        num_classes=cfg.num_classes,
        model_kwargs=OmegaConf.to_container(kwargs, resolve=True) if isinstance(kwargs, DictConfig) else dict(kwargs or {}),
        ema=cfg.ema,
    )
    data = {**OmegaConf.to_container(cfg.data, resolve=True), **info["data_config"]}
    files = list_images(cfg.image, cfg.max_images)
    x = load_images(files, data, in_chans=getattr(model, "in_chans", 3))
    queries = [q if isinstance(q, str) else tuple(q) for q in OmegaConf.to_container(cfg.queries)]
    out = Path(cfg.out_dir)
    visualize(model, x, out, names=[f.name for f in files], mean=data["mean"], std=data["std"],
              cam_methods=list(cfg.cams), queries=queries, class_names=info["class_names"], per_layer=cfg.per_layer)
    index = out / "index.html"
    print(f"{info['name']}: {len(files)} image(s) -> {index}")
    return index


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="viz")
def main(cfg: DictConfig) -> None:
    viz(cfg)


if __name__ == "__main__":
    main()
