"""Shared fixtures: the REAL Hydra configs composed and shrunk (lightning-hydra-template style)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # train.py / eval.py live at the top level
    sys.path.insert(0, str(ROOT))
CONFIG_DIR = str(ROOT / "configs")


@pytest.fixture(scope="session", autouse=True)
def zoo_data_dir(tmp_path_factory):
    """Embedded datasets are written once per session into a private cache, not ~/.cache."""
    d = tmp_path_factory.mktemp("zoo_data")
    old = os.environ.get("ZOO_DATA")
    os.environ["ZOO_DATA"] = str(d)
    yield d
    if old is None:
        os.environ.pop("ZOO_DATA", None)
    else:
        os.environ["ZOO_DATA"] = old


# Overrides that turn the real train.yaml into a seconds-long run on 2 CPU cores.
SHRINK = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.enable_progress_bar=false",
    "trainer.precision=32-true",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "callbacks.progress_bar=null",
]


def compose(config_name: str, overrides: list[str], output_dir: Path):
    """Compose ``configs/<config_name>.yaml`` with ``overrides`` and the run dir set to ``output_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from zoo.train import register_model_configs

    register_model_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name, overrides=[f"paths.output_dir={output_dir}", *overrides])


@pytest.fixture
def train_cfg(tmp_path):
    """``train_cfg(*overrides)``: the real train config, shrunk, writing into ``tmp_path``."""
    return lambda *overrides: compose("train", [*SHRINK, *overrides], tmp_path)


@pytest.fixture
def eval_cfg(tmp_path):
    return lambda *overrides: compose("eval", list(overrides), tmp_path / "eval")
