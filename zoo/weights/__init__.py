"""Checkpoint reading, layout conversion and loading, the weight catalog, safe downloads, retrofit."""
from .catalog import PretrainedCfg, class_names, list_pretrained, pretrained_cfg
from .download import DownloadError, HashMismatchError, OfflineError, UnreadableDownloadError, cache_dir
from .formats import NotACheckpointError
from .io import UnsafeCheckpointError, read_state_dict, unwrap_state_dict
from .loading import (
    CheckpointMismatchError,
    LoadReport,
    WeightSource,
    classifier_name,
    find_source,
    load_file_into,
    load_pretrained,
    load_state_dict_into,
    pretrained_kwargs,
    resolve_source,
)
from .retrofit import ResidualGate, RetrofitError

__all__ = [
    "PretrainedCfg",
    "class_names",
    "list_pretrained",
    "pretrained_cfg",
    "DownloadError",
    "HashMismatchError",
    "OfflineError",
    "UnreadableDownloadError",
    "cache_dir",
    "NotACheckpointError",
    "UnsafeCheckpointError",
    "read_state_dict",
    "unwrap_state_dict",
    "CheckpointMismatchError",
    "LoadReport",
    "WeightSource",
    "classifier_name",
    "find_source",
    "load_file_into",
    "load_pretrained",
    "load_state_dict_into",
    "pretrained_kwargs",
    "resolve_source",
    "ResidualGate",
    "RetrofitError",
]
