"""What a checkpoint file is, from its bytes alone: safetensors, a torch zip, a legacy torch pickle, or
something else (an HTML error page, text, a file cut short), told in words a user can act on.

Only the standard library is used and nothing is unpickled: :mod:`pickletools` walks the opcodes.
:mod:`zoo.weights.download` proves every file without a published hash readable with
:func:`check_file` before it enters the cache; :mod:`zoo.weights.io` uses the same words when torch
or safetensors cannot read a file.
"""
from __future__ import annotations

import json
import os
import pickletools
import re
import struct
import zipfile

__all__ = ["NotACheckpointError", "check_file", "describe_bytes", "sniff"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a pre-1.6 torch.save file
_MAX_HEADER = 100_000_000  # a safetensors header larger than this is not one (the library's own cap)
_STORAGE_BYTES = {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1,
                  "Byte": 1, "Bool": 1, "ComplexFloat": 8, "ComplexDouble": 16}


class NotACheckpointError(ValueError):
    """The file is not a complete checkpoint.

    Attributes:
        reason: what the file is instead, a noun phrase for "it is ...": ``"an HTML page titled 'Sign in'"``,
            ``"a zip archive cut short (truncated): ..."``.
        truncated: the file looks like a checkpoint cut short (worth downloading or copying again).
    """

    def __init__(self, message: str, reason: str | None = None, truncated: bool = False):
        super().__init__(message)
        self.reason = reason if reason is not None else message
        self.truncated = truncated


def sniff(head: bytes) -> str:
    """The format the first bytes announce: ``"safetensors"``, ``"zip"``, ``"pickle"``, ``"empty"`` or ``"other"``."""
    if not head:
        return "empty"
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < _MAX_HEADER:
        return "safetensors"
    return "other"


def describe_bytes(head: bytes) -> str:
    """A few words on what a non-checkpoint file is: an HTML/XML/JSON document, text, or binary data."""
    if not head:
        return "empty (0 bytes)"
    text = _as_text(head)
    if text is None:
        return f"binary data of no checkpoint format (it starts with bytes {head[:8].hex(' ')})"
    flat = " ".join(text.split())
    low = flat.lower()
    preview = repr(flat[:80] + ("..." if len(flat) > 80 else ""))
    if low.startswith(("<!doctype html", "<html")) or "<html" in low[:300]:
        title = re.search(r"<title[^>]*>(.*?)</title>", flat, re.I | re.S)
        return f"an HTML page titled {title.group(1).strip()[:80]!r}" if title else f"an HTML page ({preview})"
    if low.startswith("<"):
        return f"an XML document ({preview})"
    if low.startswith(("{", "[")):
        return f"a JSON document ({preview})"
    return f"text ({preview})"


def _as_text(head: bytes) -> str | None:
    try:
        s = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a multi-byte character cut by the end of ``head`` is still text
        if e.start < len(head) - 3:
            return None
        s = head[: e.start].decode("utf-8")
    return s if s and sum(c.isprintable() or c in "\r\n\t" for c in s) >= 0.95 * len(s) else None


def check_file(path: str | os.PathLike, *, claimed: str | None = None, full: bool = True) -> str:
    """Prove ``path`` is a complete checkpoint, reading its structure but never unpickling it.

    Args:
        path: the file.
        claimed: the file name the format is claimed by (``*.safetensors`` must be safetensors;
            other names may be any checkpoint format, as :func:`zoo.weights.read_state_dict` reads them).
        full: also check every zip member's CRC (reads the whole file, as hashing does); without it
            only headers and indices are read.

    Returns:
        ``"safetensors"``, ``"torch zip"`` or ``"legacy torch"``.

    Raises:
        NotACheckpointError: saying what the file is instead, or how it is cut short.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(512)
        kind = sniff(head)
        want_st = str(claimed or "").lower().endswith(".safetensors")
        if want_st and kind not in ("safetensors", "empty"):
            what = {"zip": "a zip archive (a torch file?)", "pickle": "a pickle (a torch file?)"}.get(kind)
            _fail(f"{what or describe_bytes(head)}, not safetensors as its name says", kind == "empty")
        if kind == "safetensors":
            f.seek(0)
            _check_safetensors(f, size)
            return "safetensors"
        if kind == "zip":
            _check_torch_zip(path, full)
            return "torch zip"
        if kind == "pickle":
            f.seek(0)
            _check_legacy_torch(f, size)
            return "legacy torch"
    if kind == "empty":
        _fail("empty (0 bytes)", truncated=True)
    _fail(describe_bytes(head))
    raise AssertionError  # unreachable


def _fail(reason: str, truncated: bool = False):
    raise NotACheckpointError(reason, reason, truncated)


def _check_safetensors(f, size: int) -> None:
    n = int.from_bytes(f.read(8), "little")
    if size < 8 + n:
        _fail(f"a safetensors file cut short (truncated): its header needs {8 + n} bytes, the file has {size}", True)
    try:
        header = json.loads(f.read(n))
        entries = {k: v for k, v in header.items() if k != "__metadata__"}
        ends = [int(v["data_offsets"][1]) for v in entries.values()]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        _fail(f"a safetensors file with a damaged header ({type(e).__name__}: {e})")
    if not entries:
        _fail("a safetensors file holding no tensors")
    need, have = max(ends), size - 8 - n
    if have < need:
        _fail(f"a safetensors file cut short (truncated): its tensors need {need} bytes of data, it has {have}", True)
    if have > need:
        _fail(f"a safetensors file with {have - need} bytes after its last tensor (damaged or appended to)")


def _check_torch_zip(path: str, full: bool) -> None:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, struct.error):
        _fail("a zip archive cut short (truncated): its central directory, at the end, is missing", True)
    with zf:
        pkls = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if not pkls:
            _fail(f"a zip archive that is no torch file (no data.pkl among {zf.namelist()[:5]})")
        try:
            data = zf.read(pkls[0])
            _walk(data)
            bad = zf.testzip() if full else None
        except (zipfile.BadZipFile, ValueError, EOFError, OSError, struct.error) as e:
            _fail(f"a damaged torch zip archive ({type(e).__name__}: {e})")
        if bad:
            _fail(f"a damaged torch zip archive: member {bad} fails its CRC check")
        if b"_rebuild" not in data:  # torch._utils._rebuild_tensor_v2 & co. rebuild every tensor
            _fail("a torch file holding no tensors")


def _walk(stream) -> list:
    """The opcodes of one pickle (from bytes or a file positioned at it); raises ValueError when cut short."""
    return list(pickletools.genops(stream))


def _check_legacy_torch(f, size: int) -> None:
    try:
        first = _walk(f)
    except ValueError:
        _fail("a pickle cut short (truncated)", True)
    if not any(op.name.startswith("LONG") and arg == _LEGACY_MAGIC for op, arg, _ in first):
        _fail("a plain Python pickle, no torch checkpoint (written with pickle.dump, not torch.save?)")
    try:
        _walk(f)  # protocol version
        _walk(f)  # system info
        main = _walk(f)  # the object, storages as persistent ids
        keys = [arg for op, arg, _ in _walk(f) if "UNICODE" in op.name]
    except ValueError:
        _fail("a legacy torch file cut short (truncated) in its pickles", True)
    itemsize, memo, last_type = {}, {}, None
    for op, arg, _ in main:  # ('storage', torch.FloatStorage, key, location, numel) per storage
        if op.name == "GLOBAL" and isinstance(arg, str) and arg.startswith("torch ") and arg.endswith("Storage"):
            last_type = arg[len("torch "):-len("Storage")]
        elif op.name.endswith("PUT") and last_type is not None:
            memo[arg] = last_type  # the storage type is memoised, later ones refer to it by GET
        elif op.name.endswith("GET"):
            last_type = memo.get(arg)
        elif last_type is not None and "UNICODE" in op.name:
            itemsize.setdefault(arg, _STORAGE_BYTES.get(last_type))
            last_type = None
    pos = f.tell()
    for key in keys:  # each storage: an 8-byte element count, then its bytes
        if pos + 8 > size:
            _fail("a legacy torch file cut short (truncated) in its tensor data", True)
        f.seek(pos)
        numel = int.from_bytes(f.read(8), "little")
        if itemsize.get(key) is None:
            return  # a storage type not known here: the structure up to it was sound
        pos += 8 + numel * itemsize[key]
    if pos > size:
        _fail(f"a legacy torch file cut short (truncated): its tensors need {pos} bytes, the file has {size}", True)
