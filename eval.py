"""Evaluate a checkpoint on an ImageFolder split: top-1, top-5, per-class accuracy, confusion matrix PNG,
predictions CSV, and with ``viz.num_images=N`` zoo.viz pictures of the first N images; with
``compress=int8-dynamic|int8-weight|int8-static|prune`` (or ``compress.prune_ratio=0.5``) also the
compressed model's top-1, size and speed against the float model (:mod:`zoo.compress.evaluate`).

``python eval.py ckpt_path=<run>/checkpoints/last.ckpt [viz.num_images=4]`` or
``python eval.py model=<name> pretrained=<path> data=<digits|cluttered_digits|imagefolder>``.
"""
from __future__ import annotations

from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import zoo
from zoo.checkpoint import load_checkpoint
from zoo.compress.evaluate import compare, resolve_method
from zoo.train import register_model_configs
from zoo.train.evaluate import predict, write_report, write_viz
from zoo.train.utils import EVAL_NUMBERS, check_numbers, process_settings, refuse_reinitialized_head

register_model_configs()


def evaluate(cfg: DictConfig) -> dict:
    """Run the evaluation described by ``cfg``; returns the metrics (also in metrics.json)."""
    check_numbers(cfg, EVAL_NUMBERS, "configs/eval.yaml")
    compress = resolve_method(cfg.compress) if cfg.get("compress") else None  # a bad method fails before any work
    meta = None
    if cfg.ckpt_path:
        model, meta = load_checkpoint(cfg.ckpt_path, use_ema=cfg.use_ema)
        data_config = meta["data_config"]  # evaluate with the preprocessing it was trained with
    elif cfg.pretrained:
        data_config = zoo.resolve_pretrained_cfg(cfg.model.name, cfg.pretrained)  # the weights' preprocessing
    else:
        raise ValueError("Give ckpt_path=<train.py checkpoint> or model=<name> pretrained=<weights>.")
    datamodule = instantiate(cfg.data, val_split=cfg.split, data_config=data_config)
    datamodule.prepare_data()
    datamodule.setup("validate")
    if meta is None:
        model = zoo.create(cfg.model.name, pretrained=cfg.pretrained, num_classes=datamodule.num_classes,
                           **OmegaConf.to_container(cfg.model.kwargs, resolve=True)).eval()
        refuse_reinitialized_head(model, datamodule.num_classes)  # a fresh head scores chance, not the weights
    elif meta["class_names"] != datamodule.classes:
        raise ValueError(f"The checkpoint was trained on classes {meta['class_names'][:10]}... but "
                         f"{datamodule.root}/{cfg.split} has {datamodule.classes[:10]}...")

    pred = predict(model, datamodule.val_dataloader(), device=cfg.device, precision=cfg.precision)
    paths = [p for p, _ in datamodule.val_set.samples]
    out = Path(cfg.paths.output_dir)
    metrics = write_report(pred, datamodule.classes, paths, out)
    print(f"top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  on {metrics['num_images']} images"
          f" ({metrics['skipped_images']} skipped"
          + (f", listed in {metrics['skipped_list']})" if metrics.get("skipped_list") else ")"))
    print(f"metrics:          {out / 'metrics.json'}\npredictions:      {out / 'predictions.csv'}\n"
          f"confusion matrix: {out / 'confusion_matrix.png'}")
    if compress:  # the same split again, compressed: top-1, size and speed against the float model
        metrics["compress"] = compare(model, cfg.compress, datamodule, metrics, pred, device=cfg.device, out_dir=out)
    dc = datamodule.data_config
    index = write_viz(model, datamodule.val_set, cfg.viz.num_images, out / "viz", mean=dc["mean"], std=dc["std"],
                      cams=cfg.viz.cams, per_layer=cfg.viz.per_layer, class_names=datamodule.classes)
    if index is not None:
        print(f"attention / CAM:  {index}")
    return metrics


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    process_settings(cfg)  # the CLI's process only
    evaluate(cfg)


if __name__ == "__main__":
    main()
