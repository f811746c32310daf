"""Checkpoint reading, layout conversion and loading (downloads and the catalog build on this)."""
from .io import UnsafeCheckpointError, read_state_dict, unwrap_state_dict
from .loading import CheckpointMismatchError, LoadReport, load_pretrained, load_state_dict_into

__all__ = [
    "UnsafeCheckpointError",
    "read_state_dict",
    "unwrap_state_dict",
    "CheckpointMismatchError",
    "LoadReport",
    "load_pretrained",
    "load_state_dict_into",
]
