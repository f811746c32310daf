"""Downloads users can trust: a local cache, hash checks, retries, offline mode, mirrors, one writer.

Environment:
    ZOO_HOME: cache root (default ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo``). Files live at
        ``<root>/checkpoints/<host>/<url path>``, e.g. ``checkpoints/download.pytorch.org/models/resnet50-11ad3fa6.pth``.
    ZOO_OFFLINE=1: never touch the network; a file missing from the cache raises, naming where to put it.
    ZOO_MIRROR: a prefix replacing the scheme of every URL, keeping host and path:
        ``https://download.pytorch.org/models/x.pth`` -> ``$ZOO_MIRROR/download.pytorch.org/models/x.pth``.
        Any URL urllib reads works (``http://host/prefix``, ``file:///shared/weights``), so a mirror is
        just a copy of ``<root>/checkpoints`` served or mounted somewhere.
    ZOO_DOWNLOAD_RETRIES, ZOO_DOWNLOAD_TIMEOUT: attempts for transient failures (default 4) and the
        socket timeout in seconds (default 30), which bounds each read.
    ZOO_DOWNLOAD_DEADLINE: seconds one download may take in all, retries included (default 3600;
        0: none), so a server trickling bytes cannot hold a run forever.

Caches users already have are used as they are, without a second download or a copy:

* a Hugging Face hub file (``https://huggingface.co/<repo>/resolve/<rev>/<file>``, how timm's
  weights are named) already in the hub cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
  ``~/.cache/huggingface/hub``); one not there is fetched with ``huggingface_hub.hf_hub_download``
  into that cache (``HF_ENDPOINT`` and tokens honoured, shared with timm), unless ZOO_MIRROR is set.
  ``HF_HUB_OFFLINE=1`` keeps these off the network like ZOO_OFFLINE.
* any other URL's file in torch.hub's cache (``torch.hub.get_dir()/checkpoints/<file name>``, i.e.
  ``$TORCH_HOME/hub/checkpoints``), where torchvision and timm put what they download.

Such files are hash-checked on every use like the zoo's own: against the catalog's digest, else the
hub's LFS sha256 (the blob's name), else the digest recorded beside ``cache_path(url)`` at first use.

A URL's query string is part of its file name (``q?f=a`` -> ``q@f=a-<hash>``), so two queries are two files.

Every download goes to a temporary ``<file>.<pid>.part`` beside its destination and is renamed into
place only when complete and verified, under an ``fcntl`` lock on ``<file>.lock``: several processes
asking for the same file at once (DDP ranks) download it once, and nobody sees a half-written file.
A file without a published sha256 must also prove readable as what it claims to be
(:func:`zoo.weights.formats.check_file`: a complete safetensors file or torch archive) before it is
kept: an HTML error page served with status 200, or a body cut short without a Content-Length, is
deleted and reported with what the server sent. SIGTERM during a transfer removes its ``.part``;
one left by SIGKILL is removed by the next download of that file.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import http.client
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .formats import NotACheckpointError, check_file

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock, the atomic rename still protects readers
    fcntl = None

__all__ = [
    "DownloadError",
    "HashMismatchError",
    "OfflineError",
    "UnreadableDownloadError",
    "cache_dir",
    "cache_path",
    "find_cached",
    "hf_cache_dir",
    "torch_hub_dir",
    "mirror_url",
    "download",
    "sha256_file",
    "verify_file",
    "verify_cache",
]

_CHUNK = 1 << 20
_USER_AGENT = "attention-zoo (urllib)"


class DownloadError(RuntimeError):
    """A file could not be fetched; the message says what to try next."""


class HashMismatchError(DownloadError):
    """The file's sha256 differs from the catalog's (or from the one recorded at first download)."""


class OfflineError(DownloadError):
    """ZOO_OFFLINE is set and the file is not in the cache."""


class UnreadableDownloadError(DownloadError):
    """The server sent something that is not the checkpoint (an HTML page, a body cut short); not cached."""


def cache_dir() -> Path:
    """Cache root: ``$ZOO_HOME``, else ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo``."""
    if os.environ.get("ZOO_HOME"):
        return Path(os.environ["ZOO_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "zoo"


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=@-]", "_", part)


def _url_relpath(url: str) -> str:
    """``host/path`` of a URL, made safe as a relative file path (no ``..``).

    A query selects another file (``.../q?f=a`` and ``.../q?f=b``), so it joins the file name, before
    its suffix (which tells the reader the format): ``model.safetensors?x=1`` -> ``model@x=1-<hash>.safetensors``;
    the hash of the raw query keeps queries apart that read alike once made safe.
    """
    u = urllib.parse.urlsplit(url)
    parts = [p for p in (u.netloc + "/" + urllib.parse.unquote(u.path)).split("/") if p not in ("", ".", "..")]
    parts = [_safe(p) for p in parts]
    if len(parts) < 2:
        raise ValueError(f"Cannot derive a cache file name from URL {url!r}.")
    if u.query:
        stem, suffix = os.path.splitext(parts[-1])
        tag = hashlib.sha256(u.query.encode()).hexdigest()[:8]
        parts[-1] = f"{stem}@{_safe(urllib.parse.unquote(u.query))[:64]}-{tag}{suffix}"
    return "/".join(parts)


def cache_path(url: str) -> Path:
    """Where ``url`` is cached: ``<cache_dir>/checkpoints/<host>/<url path>``."""
    return cache_dir() / "checkpoints" / _url_relpath(url)


def mirror_url(url: str) -> str:
    """``url`` rewritten to ``$ZOO_MIRROR/<host>/<path>`` when ZOO_MIRROR is set, else unchanged."""
    mirror = os.environ.get("ZOO_MIRROR", "").strip()
    if not mirror:
        return url
    return mirror.rstrip("/") + "/" + _url_relpath(url)


def _flag(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() not in ("", "0", "false", "no", "off")


def _offline() -> bool:
    return _flag("ZOO_OFFLINE")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at each call as huggingface_hub does
    at import: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``."""
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if hub:
        return Path(hub).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")).expanduser() / "hub"


def torch_hub_dir() -> Path:
    """torch.hub's folder: ``torch.hub.get_dir()`` (honours ``torch.hub.set_dir``) once torch is
    imported, else the same rule from the environment (``$TORCH_HOME/hub``), keeping this module
    importable without torch."""
    if "torch" in sys.modules:
        import torch.hub

        return Path(torch.hub.get_dir())
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.environ.get("TORCH_HOME") or os.path.join(xdg, "torch")).expanduser() / "hub"


def _hf_parts(url: str) -> tuple[str, str, str] | None:
    """``(repo_id, revision, filename)`` of a ``https://huggingface.co/<ns>/<repo>/resolve/<rev>/<file>`` URL."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "https" or u.netloc != "huggingface.co" or u.query:
        return None
    m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", urllib.parse.unquote(u.path))
    return (m.group(1), m.group(2), m.group(3)) if m else None


def _hf_cached(url: str) -> Path | None:
    parts = _hf_parts(url)
    if parts is None:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a timm dependency
        return None
    repo, rev, name = parts
    found = try_to_load_from_cache(repo, name, cache_dir=str(hf_cache_dir()), revision=rev)
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def _torch_hub_path(url: str) -> Path | None:
    # torch.hub.load_state_dict_from_url names the file by the URL path's last part, as here; it drops
    # the query, so its file cannot stand for a URL with one.
    u = urllib.parse.urlsplit(url)
    name = os.path.basename(u.path)
    return torch_hub_dir() / "checkpoints" / name if name and not u.query and _hf_parts(url) is None else None


def _shared_copy(url: str) -> Path | None:
    """The file of ``url`` in the Hugging Face hub cache or torch.hub's cache, or None (no network)."""
    hf = _hf_cached(url)
    if hf is not None:
        return hf
    th = _torch_hub_path(url)
    return th if th is not None and th.is_file() else None


def find_cached(url: str) -> Path | None:
    """Where ``url``'s file already is, without hashing it: zoo's cache, else a shared cache."""
    own = cache_path(url)
    return own if own.is_file() else _shared_copy(url)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _remove(*paths: Path) -> bool:
    """Delete cache files; False when the cache does not allow it (read-only)."""
    ok = True
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            ok = False
    return ok


def verify_file(path: str | os.PathLike, sha256: str | None = None, url: str | None = None, *, remove: bool = False) -> str:
    """Check a cached file against ``sha256`` (full or prefix) or the digest recorded beside it.

    Args:
        remove: delete the file (and its recorded digest) when it does not match.

    Returns:
        The file's full sha256.

    Raises:
        HashMismatchError: naming the expected and actual digests.
    """
    path = Path(path)
    actual = sha256_file(path)
    expected = sha256 or (_sidecar(path).read_text().split()[0] if _sidecar(path).is_file() else None)
    if expected and not actual.startswith(expected.lower()):
        origin = "the catalog" if sha256 else f"{_sidecar(path)} (recorded at first download)"
        removed = remove and _remove(path, _sidecar(path))
        raise HashMismatchError(
            f"{path}: sha256 {actual} does not match {expected} from {origin}"
            + (f" (source {url})" if url else "")
            + (". The corrupt file was deleted; try again to re-download it." if removed
               else ". The file is corrupt or was replaced: delete it and download again.")
        )
    return actual


def _readable(path: Path, url: str, *, remove: bool) -> bool:
    """Whether a file in zoo's cache that no published hash vouches for is a checkpoint (headers only).

    One that is not (an error page cached before downloads were checked) is deleted with its recorded
    digest when ``remove``, so the caller downloads it again; otherwise it is an error.
    """
    try:
        check_file(path, claimed=path.name, full=False)
        return True
    except NotACheckpointError as e:
        what = f"{path} (from {url}) is not a readable checkpoint: {e.reason}"
        if not (remove and _remove(path, _sidecar(path))):
            raise UnreadableDownloadError(f"{what}. Delete it and download it again.") from None
        print(f"zoo: {what}; deleted it, downloading it again", file=sys.stderr)
        return False


def _verify_shared(path: Path, url: str, sha256: str | None) -> Path:
    """Hash-check a file found in (or just fetched into) another tool's cache; it is never deleted."""
    expected, origin = sha256, "the catalog"
    side = _sidecar(cache_path(url))
    blob = Path(os.path.realpath(path)).name
    if not expected and re.fullmatch(r"[0-9a-f]{64}", blob):  # hub blobs of LFS files are named by sha256
        expected, origin = blob, "the Hugging Face hub (the file's LFS sha256)"
    published = bool(expected)
    if not expected and side.is_file():
        expected, origin = side.read_text().split()[0], f"{side} (recorded at first use)"
    actual = sha256_file(path)
    if expected and not actual.startswith(expected.lower()):
        raise HashMismatchError(
            f"{path}: sha256 {actual} does not match {expected} from {origin} (source {url}). The copy in that "
            "shared cache is corrupt or another file of the same name: delete it and try again."
        )
    if not published:  # only a digest recorded here, or none: the file must show it is a checkpoint
        try:
            check_file(path, claimed=path.name, full=not expected)
        except NotACheckpointError as e:
            raise UnreadableDownloadError(f"{path} (used for {url}) is not a readable checkpoint: {e.reason}. "
                                          "It is in another tool's cache: delete it and try again.") from None
    if not expected:
        tmp = side.with_name(f"{side.name}.{os.getpid()}.tmp")
        try:
            side.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(f"{actual}  {path}\n")
            os.replace(tmp, side)
        except OSError:  # a read-only zoo cache: nothing recorded, the file is checked again next time
            _remove(tmp)
    return path


class _Transient(Exception):
    """A failure worth retrying (connection reset, 5xx, timeout, short read)."""


class _Deadline(Exception):
    """The whole transfer ran past its deadline; ``info`` is what had arrived (see :func:`_fetch_once`)."""

    def __init__(self, info: dict):
        super().__init__()
        self.info = info


class _Terminated(BaseException):
    """SIGTERM during a transfer, raised so that ``finally`` blocks remove the ``.part`` file."""


@contextlib.contextmanager
def _sigterm_cleans_up():
    """Turn SIGTERM into :class:`_Terminated` while a file is fetched, then die of SIGTERM as the default
    action would. Only in the main thread (where Python runs handlers) and only over the default
    action: a handler the program installed is left to do its own job."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def on_term(signum, frame):
        raise _Terminated

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise SystemExit(128 + signal.SIGTERM) from None  # not reached: the default action ends the process
    finally:
        if signal.getsignal(signal.SIGTERM) is on_term:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _lock(path: Path):
    lock_path = path.with_name(path.name + ".lock")

    @contextlib.contextmanager
    def held():
        with open(lock_path, "a+") as f:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    return held()


def _progress(total: int | None, desc: str, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with timm/huggingface_hub
        return contextlib.nullcontext(None)
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=None if enabled else True, leave=False)


def _fetch_once(url: str, tmp: Path, timeout: float, progress: bool, end: float | None) -> dict:
    """Fetch ``url`` into ``tmp``; returns what the server sent: ``status``, ``type`` (Content-Type),
    ``length`` (Content-Length or None), ``got`` (bytes). ``end``: the ``time.monotonic()`` deadline."""
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    left = None if end is None else end - time.monotonic()
    try:
        resp = urllib.request.urlopen(req, timeout=timeout if left is None else max(0.01, min(timeout, left)))
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code in (408, 429):
            raise _Transient(f"HTTP {e.code} {e.reason}") from None
        raise
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLError):
            raise
        if isinstance(e.reason, (TimeoutError, socket.timeout, ConnectionError)):
            raise _Transient(f"{type(e.reason).__name__}: {e.reason}") from None
        raise
    except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise _Transient(f"{type(e).__name__}: {e}") from None
    with resp:
        total = resp.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        info = {"status": getattr(resp, "status", None), "type": resp.headers.get("Content-Type"), "length": total,
                "got": 0}
        # read1 returns what one socket read brings: a trickling server cannot hold one call for a whole
        # chunk, so the deadline is checked at least once per ZOO_DOWNLOAD_TIMEOUT.
        read = getattr(resp, "read1", resp.read)
        try:
            with open(tmp, "wb") as f, _progress(total, tmp.name.split(".")[0], progress) as bar:
                while True:
                    block = read(_CHUNK)
                    if not block:
                        break
                    f.write(block)
                    info["got"] += len(block)
                    if bar is not None:
                        bar.update(len(block))
                    if end is not None and time.monotonic() > end:
                        raise _Deadline(info)
                f.flush()
                os.fsync(f.fileno())
        except (TimeoutError, ConnectionError, http.client.IncompleteRead) as e:
            raise _Transient(f"transfer interrupted after {info['got']} bytes ({type(e).__name__})") from None
    if total is not None and info["got"] != total:
        raise _Transient(f"incomplete transfer: got {info['got']} of {total} bytes")
    return info


def _sent(info: dict) -> str:
    """What the server sent, in one phrase: ``HTTP 200 (text/html, 1234 bytes, no Content-Length)``."""
    parts = [info["type"] or "no Content-Type", f"{info['got']} bytes"]
    if info["length"] is None:
        parts.append("no Content-Length")
    return f"{'HTTP ' + str(info['status']) if info['status'] else 'a response'} ({', '.join(parts)})"


def _advice(url: str) -> str:
    return (
        "To get the file another way: set ZOO_MIRROR to a mirror of the cache layout "
        f"(this file would be $ZOO_MIRROR/{_url_relpath(url)}), copy the file to {cache_path(url)} "
        "(then ZOO_OFFLINE=1 works), or pass pretrained='<local path>'."
    )


def _env_number(var: str, default: float) -> float:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise DownloadError(f"{var}={raw!r} is not a number of seconds (or attempts); unset it or give one, "
                            f"e.g. {var}={default:g}.") from None


def download(
    url: str,
    *,
    sha256: str | None = None,
    dest: str | os.PathLike | None = None,
    progress: bool = True,
    retries: int | None = None,
    backoff: float = 1.0,
    timeout: float | None = None,
    deadline: float | None = None,
) -> Path:
    """Return a verified local copy of ``url``, downloading it once into the cache if needed.

    Looks in zoo's cache, then in the Hugging Face hub / torch.hub caches (see the module docstring);
    a hub file not cached anywhere is fetched by ``huggingface_hub`` into the hub cache (unless
    ZOO_MIRROR is set), any other into zoo's cache.

    Args:
        url: the publisher's URL (rewritten through ZOO_MIRROR when set).
        sha256: expected digest, full or a published prefix. Without one, the file must prove to be a
            readable checkpoint, and its digest is recorded in ``<file>.sha256`` at first download
            and checked on every later call.
        dest: file path to use instead of :func:`cache_path` (the shared caches are then not used).
        progress: show a progress bar on stderr (when it is a terminal).
        retries: attempts for transient failures (default ``$ZOO_DOWNLOAD_RETRIES`` or 4).
        backoff: first wait in seconds between attempts, doubled each time.
        timeout: socket timeout in seconds, for each read (default ``$ZOO_DOWNLOAD_TIMEOUT`` or 30).
        deadline: seconds for the whole download, retries included (default ``$ZOO_DOWNLOAD_DEADLINE``
            or 3600; 0 for none).

    Raises:
        OfflineError: ZOO_OFFLINE (or, for a hub file, HF_HUB_OFFLINE) is set and the file is not cached.
        HashMismatchError: the downloaded (or cached) file has another digest; a fresh download is deleted.
        UnreadableDownloadError: the server sent no checkpoint (an HTML page, a body cut short); not kept.
        DownloadError: not found, proxy/TLS failure, transient failures on every attempt, past the
            deadline, or a cache folder that is not writable.
    """
    path = Path(dest) if dest is not None else cache_path(url)
    if path.is_file():  # fast path, no lock needed: files only appear by atomic rename
        verify_file(path, sha256, url, remove=dest is None)
        if sha256 or _readable(path, url, remove=dest is None):
            return path
    shared = _shared_copy(url) if dest is None else None
    if shared is not None:  # already downloaded by timm / torchvision / huggingface_hub: use it in place
        return _verify_shared(shared, url, sha256)
    hf = _hf_parts(url) if dest is None else None
    if _offline() or (hf and _flag("HF_HUB_OFFLINE")):
        raise OfflineError(_offline_message(url, path, hf))
    retries = int(_env_number("ZOO_DOWNLOAD_RETRIES", 4)) if retries is None else retries
    timeout = _env_number("ZOO_DOWNLOAD_TIMEOUT", 30) if timeout is None else timeout
    deadline = _env_number("ZOO_DOWNLOAD_DEADLINE", 3600) if deadline is None else deadline
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _sigterm_cleans_up(), _lock(path):  # one download across processes (DDP ranks)
            if path.is_file():  # another process finished it while we waited for the lock
                verify_file(path, sha256, url, remove=dest is None)
                if sha256 or _readable(path, url, remove=dest is None):
                    return path
            shared = _shared_copy(url) if dest is None else None
            if shared is not None:
                return _verify_shared(shared, url, sha256)
            if hf and mirror_url(url) == url:
                return _verify_shared(_hf_download(url, hf, progress=progress, timeout=timeout), url, sha256)
            _download_locked(url, path, sha256, progress=progress, retries=max(1, retries), backoff=backoff,
                             timeout=timeout, deadline=deadline)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not _under(e.filename, path.parent):
            raise
        raise DownloadError(
            f"The cache is not writable: {e.filename} ({e.strerror}), so {url} cannot be downloaded to {path}. "
            f"Set ZOO_HOME to a writable folder (the cache is {cache_dir()} now), put the file at {path} from an "
            "account that can write there (then it is used as is), or pass pretrained='<local path>'."
        ) from None
    return path


def _under(name, folder: Path) -> bool:
    """Whether the path ``name`` (an OSError's filename) is ``folder``, inside it, or one of its parents."""
    if name is None:
        return False
    p = Path(os.fsdecode(name))
    return p == folder or folder in p.parents or p in folder.parents


def _offline_message(url: str, path: Path, hf: tuple[str, str, str] | None) -> str:
    var = "ZOO_OFFLINE" if _offline() else "HF_HUB_OFFLINE"
    if hf:
        repo, rev, name = hf
        other = f" or in the Hugging Face cache {hf_cache_dir()} (hf download {repo} {name} --revision {rev})"
    else:
        other = f" or at {_torch_hub_path(url)} (torch.hub's cache)"
    return (f"{var} is set and {path.name} is not in the cache. Download {url} on a machine with network "
            f"access and put it at {path}{other}, or pass pretrained='<local path>'.")


def _hf_download(url: str, parts: tuple[str, str, str], *, progress: bool, timeout: float) -> Path:
    """Fetch a hub file into the Hugging Face cache with huggingface_hub (its endpoint, token, resume)."""
    from huggingface_hub import hf_hub_download

    repo, rev, name = parts
    kwargs = {}
    if not progress:
        from tqdm.auto import tqdm

        class _Silent(tqdm):
            def __init__(self, *args, **kw):
                super().__init__(*args, **{**kw, "disable": True})

        kwargs["tqdm_class"] = _Silent
    try:
        return Path(hf_hub_download(repo, name, revision=rev, cache_dir=str(hf_cache_dir()),
                                    endpoint=os.environ.get("HF_ENDPOINT") or None, etag_timeout=timeout, **kwargs))
    except Exception as e:  # huggingface_hub's errors (not found, gated, offline, HTTP) share no useful base
        chain, err = [], e
        while err is not None and len(chain) < 5:  # it wraps the HTTP error in "not in the local cache"
            chain.append(err)
            err = err.__cause__ or err.__context__
        status = next((c.response.status_code for c in chain if getattr(c, "response", None) is not None), None)
        hint = {401: "unauthorised: log in with `hf auth login` or set HF_TOKEN", 403: "forbidden (a gated repo? "
                "accept its terms on the hub)", 404: "not found"}.get(status, "")
        what = f"HTTP {status}{' ' + hint if hint else ''}; " if status else ""
        raise DownloadError(f"Downloading {url} with huggingface_hub failed ({what}{type(chain[-1]).__name__}: "
                            f"{_first_line(chain[-1])}). {_advice(url)}") from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _download_locked(url: str, path: Path, sha256: str | None, *, progress: bool, retries: int, backoff: float,
                     timeout: float, deadline: float) -> None:
    src = mirror_url(url)
    via = f" (via mirror {src})" if src != url else ""
    # Under the lock only its holder writes a .part: any other was left by a killed process.
    for stale in path.parent.glob(glob.escape(path.name) + ".*.part"):
        _remove(stale)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    end = time.monotonic() + deadline if deadline and deadline > 0 else None
    late = (f"Downloading {url}{via} did not finish within its deadline of {deadline:g} s (ZOO_DOWNLOAD_DEADLINE)"
            if end is not None else "")
    slow = ("The server sends too slowly or stalls; for a large file over a slow link raise ZOO_DOWNLOAD_DEADLINE "
            f"(0: no deadline). {_advice(url)}")
    try:
        for attempt in range(1, retries + 1):
            try:
                info = _fetch_once(src, tmp, timeout, progress, end)
                if not sha256:  # nothing vouches for the bytes: they must at least be a whole checkpoint
                    _check_download(tmp, path, url, via, info)
                break
            except _Deadline as e:
                got, total = e.info["got"], e.info["length"]
                raise DownloadError(f"{late}: got {got} of {total if total is not None else 'an unknown number of'} "
                                    f"bytes. {slow}") from None
            except _Transient as e:
                if attempt == retries:
                    raise DownloadError(
                        f"Downloading {url}{via} failed {retries} times; last error: {e}. "
                        f"The server may be down or the network unreliable. {_advice(url)}"
                    ) from None
                wait = backoff * 2 ** (attempt - 1)
                if end is not None and time.monotonic() + wait >= end:
                    raise DownloadError(f"{late}, after {attempt} attempts; last error: {e}. {slow}") from None
                print(f"zoo: {e} while downloading {src}; retry {attempt}/{retries - 1} in {wait:.1f}s", file=sys.stderr)
                time.sleep(wait)
            except urllib.error.HTTPError as e:
                what = {404: "not found", 403: "forbidden", 401: "unauthorised", 407: "proxy authentication required"}
                hint = " Check HTTPS_PROXY / HTTP_PROXY." if e.code == 407 else ""
                raise DownloadError(f"Downloading {src}: HTTP {e.code} ({what.get(e.code, e.reason)}).{hint} {_advice(url)}") from None
            except urllib.error.URLError as e:
                reason = e.reason
                if isinstance(reason, ssl.SSLError):
                    kind = "TLS/certificate failure; if a proxy re-signs traffic, point SSL_CERT_FILE at its CA bundle."
                elif "proxy" in str(reason).lower() or "tunnel" in str(reason).lower():
                    kind = "proxy failure; check HTTPS_PROXY / HTTP_PROXY / NO_PROXY."
                else:
                    kind = "network unreachable or host unknown."
                raise DownloadError(f"Downloading {src}: {reason} ({kind}) {_advice(url)}") from None
        actual = sha256_file(tmp)
        if sha256 and not actual.startswith(sha256.lower()):
            try:
                check_file(tmp, claimed=path.name, full=False)
                what = ""
            except NotACheckpointError as e:
                what = f" It sent {_sent(info)}: {e.reason}."
            raise HashMismatchError(
                f"Downloaded {url}{via}: sha256 {actual} does not match the catalog's {sha256}.{what} "
                "The file was deleted; the server sent a corrupt or different file. "
                f"Retry later, or check the mirror. {_advice(url)}"
            )
        if not sha256:
            side = _sidecar(path)
            side.with_name(side.name + ".tmp").write_text(f"{actual}  {path.name}\n")
            os.replace(side.with_name(side.name + ".tmp"), side)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_download(tmp: Path, path: Path, url: str, via: str, info: dict) -> None:
    """Raise unless ``tmp`` is a complete checkpoint of the format ``path``'s name claims: a body cut
    short is worth another attempt (:class:`_Transient`), anything else (an error page) is not."""
    try:
        check_file(tmp, claimed=path.name)
    except NotACheckpointError as e:
        sent = f"the server sent {_sent(info)}: {e.reason}"
        if e.truncated:
            raise _Transient(sent) from None
        raise UnreadableDownloadError(
            f"Downloaded {url}{via}, but {sent}. Nothing was cached. A login, consent or error page served "
            f"in place of the file looks like this: check that the URL gives the file itself. {_advice(url)}"
        ) from None


def verify_cache(root: str | os.PathLike | None = None, known: dict[str, str | None] | None = None) -> list[tuple[Path, str, str]]:
    """Re-hash every cached checkpoint; one that no catalog hash vouches for must also be readable.

    Args:
        root: cache root (default :func:`cache_dir`).
        known: ``{cache file path: expected sha256}`` from the catalog; files not in it are checked
            against their recorded ``.sha256`` beside them and for their structure
            (:func:`zoo.weights.formats.check_file`).

    Returns:
        ``(path, status, detail)`` per file, status ``"ok"``, ``"mismatch"``, ``"unreadable"`` (not a
        complete checkpoint: an error page, a file cut short) or ``"unverified"`` (no digest anywhere).
    """
    base = Path(root) if root is not None else cache_dir()
    known = {str(k): v for k, v in (known or {}).items()}
    out = []
    for p in sorted((base / "checkpoints").rglob("*")):
        if not p.is_file() or p.suffix in (".lock", ".sha256", ".part", ".tmp"):
            continue
        expected = known.get(str(p))
        try:
            digest = verify_file(p, expected)
        except HashMismatchError as e:
            out.append((p, "mismatch", str(e)))
            continue
        if expected is None:
            try:
                check_file(p, claimed=p.name)
            except NotACheckpointError as e:
                out.append((p, "unreadable", f"{p}: {e.reason}. Delete it and download it again."))
                continue
        out.append((p, "ok" if expected is not None or _sidecar(p).is_file() else "unverified", digest))
    return out
