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
        socket timeout in seconds (default 30).

Every download goes to a temporary file beside its destination and is renamed into place only when
complete and verified, under an ``fcntl`` lock on ``<file>.lock``: several processes asking for the
same file at once (DDP ranks) download it once, and nobody sees a half-written file.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock, the atomic rename still protects readers
    fcntl = None

__all__ = [
    "DownloadError",
    "HashMismatchError",
    "OfflineError",
    "cache_dir",
    "cache_path",
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


def cache_dir() -> Path:
    """Cache root: ``$ZOO_HOME``, else ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo``."""
    if os.environ.get("ZOO_HOME"):
        return Path(os.environ["ZOO_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "zoo"


def _url_relpath(url: str) -> str:
    """``host/path`` of a URL, made safe as a relative file path (no ``..``, no query)."""
    u = urllib.parse.urlsplit(url)
    parts = [p for p in (u.netloc + "/" + urllib.parse.unquote(u.path)).split("/") if p not in ("", ".", "..")]
    parts = [re.sub(r"[^A-Za-z0-9._+=@-]", "_", p) for p in parts]
    if len(parts) < 2:
        raise ValueError(f"Cannot derive a cache file name from URL {url!r}.")
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


def _offline() -> bool:
    return os.environ.get("ZOO_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


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
        if remove:
            path.unlink(missing_ok=True)
            _sidecar(path).unlink(missing_ok=True)
        raise HashMismatchError(
            f"{path}: sha256 {actual} does not match {expected} from {origin}"
            + (f" (source {url})" if url else "")
            + (". The corrupt file was deleted; try again to re-download it." if remove
               else ". The file is corrupt or was replaced: delete it and download again.")
        )
    return actual


class _Transient(Exception):
    """A failure worth retrying (connection reset, 5xx, timeout, short read)."""


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


def _fetch_once(url: str, tmp: Path, timeout: float, progress: bool) -> int:
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
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
        got = 0
        try:
            with open(tmp, "wb") as f, _progress(total, tmp.name.split(".")[0], progress) as bar:
                while True:
                    block = resp.read(_CHUNK)
                    if not block:
                        break
                    f.write(block)
                    got += len(block)
                    if bar is not None:
                        bar.update(len(block))
                f.flush()
                os.fsync(f.fileno())
        except (TimeoutError, ConnectionError, http.client.IncompleteRead) as e:
            raise _Transient(f"transfer interrupted after {got} bytes ({type(e).__name__})") from None
    if total is not None and got != total:
        raise _Transient(f"incomplete transfer: got {got} of {total} bytes")
    return got


def _advice(url: str) -> str:
    return (
        "To get the file another way: set ZOO_MIRROR to a mirror of the cache layout "
        f"(this file would be $ZOO_MIRROR/{_url_relpath(url)}), copy the file to {cache_path(url)} "
        "(then ZOO_OFFLINE=1 works), or pass pretrained='<local path>'."
    )


def download(
    url: str,
    *,
    sha256: str | None = None,
    dest: str | os.PathLike | None = None,
    progress: bool = True,
    retries: int | None = None,
    backoff: float = 1.0,
    timeout: float | None = None,
) -> Path:
    """Return a verified local copy of ``url``, downloading it once into the cache if needed.

    Args:
        url: the publisher's URL (rewritten through ZOO_MIRROR when set).
        sha256: expected digest, full or a published prefix. Without one, the file's digest is
            recorded in ``<file>.sha256`` at first download and checked on every later call.
        dest: file path to use instead of :func:`cache_path`.
        progress: show a progress bar on stderr (when it is a terminal).
        retries: attempts for transient failures (default ``$ZOO_DOWNLOAD_RETRIES`` or 4).
        backoff: first wait in seconds between attempts, doubled each time.
        timeout: socket timeout in seconds (default ``$ZOO_DOWNLOAD_TIMEOUT`` or 30).

    Raises:
        OfflineError: ZOO_OFFLINE is set and the file is not cached.
        HashMismatchError: the downloaded (or cached) file has another digest; a fresh download is deleted.
        DownloadError: not found, proxy/TLS failure, or transient failures on every attempt.
    """
    path = Path(dest) if dest is not None else cache_path(url)
    if path.is_file():  # fast path, no lock needed: files only appear by atomic rename
        verify_file(path, sha256, url, remove=dest is None)
        return path
    if _offline():
        raise OfflineError(
            f"ZOO_OFFLINE is set and {path.name} is not in the cache. Download {url} on a machine with "
            f"network access and put it at {path}, or pass pretrained='<local path>'."
        )
    retries = int(os.environ.get("ZOO_DOWNLOAD_RETRIES", 4)) if retries is None else retries
    timeout = float(os.environ.get("ZOO_DOWNLOAD_TIMEOUT", 30)) if timeout is None else timeout
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path):
        if path.is_file():  # another process finished it while we waited for the lock
            verify_file(path, sha256, url, remove=dest is None)
            return path
        _download_locked(url, path, sha256, progress=progress, retries=max(1, retries), backoff=backoff, timeout=timeout)
    return path


def _download_locked(url: str, path: Path, sha256: str | None, *, progress: bool, retries: int, backoff: float,
                     timeout: float) -> None:
    src = mirror_url(url)
    via = f" (via mirror {src})" if src != url else ""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        for attempt in range(1, retries + 1):
            try:
                _fetch_once(src, tmp, timeout, progress)
                break
            except _Transient as e:
                if attempt == retries:
                    raise DownloadError(
                        f"Downloading {url}{via} failed {retries} times; last error: {e}. "
                        f"The server may be down or the network unreliable. {_advice(url)}"
                    ) from None
                wait = backoff * 2 ** (attempt - 1)
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
            raise HashMismatchError(
                f"Downloaded {url}{via}: sha256 {actual} does not match the catalog's {sha256}. "
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


def verify_cache(root: str | os.PathLike | None = None, known: dict[str, str | None] | None = None) -> list[tuple[Path, str, str]]:
    """Re-hash every cached checkpoint.

    Args:
        root: cache root (default :func:`cache_dir`).
        known: ``{cache file path: expected sha256}`` from the catalog; files not in it are checked
            against their recorded ``.sha256`` beside them.

    Returns:
        ``(path, status, detail)`` per file, status ``"ok"``, ``"mismatch"`` or ``"unverified"`` (no
        digest anywhere).
    """
    base = Path(root) if root is not None else cache_dir()
    known = {str(k): v for k, v in (known or {}).items()}
    out = []
    for p in sorted((base / "checkpoints").rglob("*")):
        if not p.is_file() or p.suffix in (".lock", ".sha256", ".part", ".tmp"):
            continue
        expected = known.get(str(p))
        if expected is None and not _sidecar(p).is_file():
            out.append((p, "unverified", sha256_file(p)))
            continue
        try:
            out.append((p, "ok", verify_file(p, expected)))
        except HashMismatchError as e:
            out.append((p, "mismatch", str(e)))
    return out
