"""Data: embedded datasets, ImageFolder checks, bad-file skipping, transforms, sampler and resumable loader."""
from __future__ import annotations

import csv
import multiprocessing as mp
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from zoo.data import (
    EpochSampler,
    ImageFolder,
    ImageFolderDataModule,
    ResumableLoader,
    check_splits,
    collate_skip,
    ensure_embedded,
    eval_transform,
    read_boxes,
    resolve_data_config,
    train_transform,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _tree(tmp_path, classes=("a", "b"), n=3, size=20):
    for split in ("train", "val"):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(str(tmp_path / split / c / f"{i}.png"), np.full((size, size, 3), 40 * i, np.uint8))
    return tmp_path


def test_digits_tree_is_the_real_dataset_split_by_class():
    root = ensure_embedded("digits")
    train = ImageFolder(root / "train")
    val = ImageFolder(root / "val")
    assert train.classes == val.classes == [str(i) for i in range(10)]
    assert len(train) + len(val) == 1797 and 340 < len(val) < 380
    img = cv2.imread(train.samples[0][0], cv2.IMREAD_UNCHANGED)
    assert img.shape == (32, 32) and img.max() > 200  # upscaled 8x8 digit with ink
    assert ensure_embedded("digits") == root  # second call reuses the cache


def _race(root, q):
    q.put(str(ensure_embedded("digits", root)))


def test_embedded_write_is_atomic_under_a_race(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(tmp_path, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert {q.get(timeout=5) for _ in procs} == {str(tmp_path / "digits-v1")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits-v1"]  # no temporary folder left
    assert len(ImageFolder(tmp_path / "digits-v1" / "val")) + len(ImageFolder(tmp_path / "digits-v1" / "train")) == 1797


def test_cluttered_digits_boxes_hold_the_digit():
    root = ensure_embedded("cluttered_digits")
    rows = list(csv.DictReader(open(root / "val" / "boxes.csv")))
    assert len(rows) == len(ImageFolder(root / "val"))
    for r in rows[:50]:
        img = cv2.imread(str(root / "val" / r["path"]), cv2.IMREAD_GRAYSCALE)
        x0, y0, x1, y1 = (int(r[k]) for k in ("x0", "y0", "x1", "y1"))
        assert img.shape == (64, 64) and 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        assert r["path"].split("/")[0] == r["label"]
        inside = img[y0:y1, x0:x1].astype(float).sum()
        assert inside > 0.4 * img.sum()  # clutter is patches, the digit is whole


def test_cluttered_x8_shares_validation_and_places_each_training_digit_8_times():
    one, x8 = ensure_embedded("cluttered_digits"), ensure_embedded("cluttered_digits_x8")
    val = read_boxes(one, "val")
    assert val == read_boxes(x8, "val")
    first = next(iter(val))  # the pixels too, not only the boxes
    assert np.array_equal(cv2.imread(str(one / "val" / first)), cv2.imread(str(x8 / "val" / first)))
    train1, train8 = read_boxes(one, "train"), read_boxes(x8, "train")
    assert len(train8) == 8 * len(train1) == 8 * 1438
    stem = Path(next(iter(train1))).stem  # one digit's 8 placements: 8 files, not all in one place
    placements = [b for p, b in train8.items() if Path(p).stem.split("-")[0] == stem]
    assert len(placements) == 8 and len(set(placements)) > 1


def test_missing_root_and_mismatched_classes_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_splits(tmp_path / "nope")
    _tree(tmp_path)
    (tmp_path / "val" / "c").mkdir()
    with pytest.raises(ValueError, match=r"only in val: \['c'\]"):
        ImageFolderDataModule(root=str(tmp_path), img_size=16).setup()
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        check_splits(empty)


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    _tree(tmp_path)
    (tmp_path / "train" / "a" / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    ds = ImageFolder(tmp_path / "train", transform=eval_transform(16, MEAN, STD, "bilinear", 1.0))
    with pytest.warns(UserWarning, match="bad.jpg"):
        items = [ds[i] for i in range(len(ds))]
    assert sum(it is None for it in items) == 1
    batch = collate_skip(items)
    assert batch["skipped"] == 1 and batch["image"].shape == (6, 3, 16, 16) and len(batch["index"]) == 6


def test_corrupt_image_counted_in_a_training_run(train_cfg, tmp_path):
    import train

    data = _tree(tmp_path / "data", n=4, size=24)
    (data / "train" / "b" / "zz_bad.png").write_bytes(b"garbage")
    (data / "val" / "a" / "zz_bad.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped 1 undecodable"):
        s = train.train(train_cfg("model=resnet18", "data=imagefolder", f"data.root={data}", "data.img_size=32",
                                  "data.batch_size=9", "data.num_workers=0", "logger=[]"))
    assert s["final"]["train/skipped_images"] == 1 and s["final"]["val/skipped_images"] == 1


def test_transforms_shapes_and_crop_pct():
    img = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    t = train_transform(32, MEAN, STD, "bicubic", hflip=0.5, randaugment={"num_ops": 2, "magnitude": 9, "magnitude_std": 0.5})
    assert t(image=img)["image"].shape == (3, 32, 32)
    e = eval_transform(32, MEAN, STD, "bilinear", crop_pct=0.5)  # shorter side -> 64, centre 32
    out = e(image=img)["image"]
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert abs(float(out.mean()) - (img[8:40, 16:48].mean() / 255 - 0.5) / 0.5) < 0.25


def test_resolve_data_config_falls_back_to_config():
    cfg = dict(img_size=64, mean=[0.1, 0.2, 0.3], std=[1, 1, 1], interpolation="bicubic", crop_pct=0.9)
    out = resolve_data_config(cfg, None)
    assert out == {**cfg, "mean": (0.1, 0.2, 0.3), "std": (1.0, 1.0, 1.0)}
    with pytest.raises(ValueError, match="interpolation must be one of .*bicubic"):
        resolve_data_config({**cfg, "interpolation": "fancy"})
    with pytest.raises(ValueError, match="crop_pct"):
        resolve_data_config(cfg, {"crop_pct": 1.5})


def test_epoch_sampler_is_seeded_per_epoch_and_shards_disjointly():
    s = EpochSampler(10, shuffle=True, seed=3)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1
    s.set_epoch(0)
    assert list(s) == e0
    shards = []
    for rank in range(2):
        r = EpochSampler(10, shuffle=True, seed=3, drop_last=True)
        r.rank, r.world = rank, 2
        shards.append(list(r))
    assert len(shards[0]) == len(shards[1]) == 5 and not set(shards[0]) & set(shards[1])


def test_resumable_loader_skips_what_was_consumed():
    ds = list(range(20))
    loader = ResumableLoader(ds, batch_size=4, sampler=EpochSampler(20, shuffle=True, seed=1), drop_last=True)
    loader.sampler.set_epoch(2)
    it = iter(loader)
    first = [next(it).tolist() for _ in range(2)]
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches": 2}
    rest = [b.tolist() for b in it]
    fresh = ResumableLoader(ds, batch_size=4, sampler=EpochSampler(20, shuffle=True, seed=1), drop_last=True)
    fresh.load_state_dict(state)
    assert [b.tolist() for b in fresh] == rest and len(first + rest) == 5
    assert fresh.state_dict()["batches"] == 5


def test_datamodule_digits(tmp_path):
    dm = ImageFolderDataModule(embedded="digits", img_size=24, mean=MEAN, std=STD, crop_pct=1.0, batch_size=16)
    dm.prepare_data()
    dm.setup()
    assert dm.num_classes == 10 and dm.data_config["img_size"] == 24
    b = next(iter(dm.val_dataloader()))
    assert b["image"].shape == (16, 3, 24, 24) and b["target"].tolist() == [0] * 16
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_data_config_comes_from_the_model_not_the_catalog():
    """The data layer takes the preprocessing the builder resolved (model.pretrained_cfg, or
    zoo.resolve_pretrained_cfg before the model exists) and never reads the weight catalog itself."""
    import ast

    import zoo
    from zoo.data.transforms import resolve_data_config

    for path in (Path(zoo.__file__).parent / "data").glob("*.py"):
        tree = ast.parse(path.read_text())
        mods = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        mods += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in mods if "weights" in m or "builder" in m], (path.name, mods)

    cfg = dict(img_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", crop_pct=1.0)
    assert resolve_data_config(cfg, None)["img_size"] == 32
    assert zoo.resolve_pretrained_cfg("swin_t", False) is None
    got = resolve_data_config(cfg, zoo.resolve_pretrained_cfg("swin_t", True))  # default tag: torchvision's
    assert (got["img_size"], got["interpolation"], got["crop_pct"]) == (224, "bicubic", 0.9655)
    assert resolve_data_config(cfg, zoo.resolve_pretrained_cfg("swin_t", "ms_in1k"))["crop_pct"] == 0.9
    # Retrofit: an attention ResNet started from a plain ResNet takes the backbone weights' preprocessing.
    pre = zoo.resolve_pretrained_cfg("cbam_resnet50", "resnet50.tv2_in1k")
    assert resolve_data_config(cfg, pre)["interpolation"] == "bilinear"
    # The model built with those weights carries the same preprocessing (resolved once, in the builder).
    with torch.device("meta"):
        model = zoo.create("swin_v2_t", window_size=16)
    assert model.pretrained_cfg["input_size"] == (3, 256, 256)
    assert resolve_data_config(cfg, model.pretrained_cfg)["img_size"] == 256
    dm = ImageFolderDataModule(embedded="digits", **cfg, data_config=model.pretrained_cfg)
    assert dm.data_config == {"img_size": 256, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                              "interpolation": "bicubic", "crop_pct": 0.875}
    with pytest.raises(ValueError, match="not square"):
        resolve_data_config(cfg, {"input_size": (3, 224, 192)})
    with pytest.raises(ValueError, match="swin_tt"):  # a misspelt model name is caught before any data work
        zoo.resolve_pretrained_cfg("swin_tt", True)
