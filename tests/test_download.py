"""Downloads against a local HTTP server: cache, hashes, retries, errors, offline, mirror, concurrency."""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

from zoo.weights import download as dl
from zoo.weights.__main__ import main as cli


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# Served files are real checkpoints (random weights, so every run hashes differently): a file
# without a published hash must prove it is readable before it is cached.
BODY = save_safetensors({"w": torch.randn(75_000)})
SHA = hashlib.sha256(BODY).hexdigest()
ZIP_BODY = _torch_bytes({"w": torch.randn(75_000)})
QUERY_BODIES = {"f=a": save_safetensors({"a": torch.randn(100)}), "f=b": save_safetensors({"b": torch.randn(100)})}
HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please log in</body></html>\n"
# Flip the last byte (not "replace it by x": 1 random body in 256 already ends in x).
CORRUPT = BODY[:-1] + bytes([BODY[-1] ^ 0xFF])
COMMIT = "0123456789abcdef0123456789abcdef01234567"
HF_URL = "https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Behaviour by path: /ok, /404, /flaky (500 once, then ok), /stall, /truncate, /corrupt, /slow,
    /nolen (half a torch file, no Content-Length), /html (an error page with status 200), /query
    (the body the query names), /trickle (a byte every 50 ms), /hang (headers and a little body, then
    nothing, on the first request only)."""

    hits: dict[str, int] = {}
    lock = threading.Lock()

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, body: bytes, length: int | None = None):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self):
        """The Hugging Face hub's file metadata (what huggingface_hub asks before a download)."""
        with self.lock:
            self.hits[f"HEAD {self.path}"] = self.hits.get(f"HEAD {self.path}", 0) + 1
        if self.path.startswith("/404/"):
            self.send_error(404)
            return
        if "slow_model" in self.path:
            time.sleep(1.0)
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{SHA}"')
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()

    def _trickle(self, body: bytes, every: float, limit: float):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        end = time.monotonic() + limit
        try:
            for i in range(len(body)):
                if time.monotonic() > end:
                    break
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
                time.sleep(every)
        except OSError:  # the client gave up
            pass
        self.close_connection = True

    def do_GET(self):
        with self.lock:
            n = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        kind = self.path.split("/")[1]
        if kind == "nolen":  # HTTP/1.0 without Content-Length: the body ends where the connection does
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(ZIP_BODY[: len(ZIP_BODY) // 2])
            self.close_connection = True
        elif kind == "html":
            body = HTML
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif kind == "query":
            self._send(QUERY_BODIES[self.path.split("?", 1)[1]])
        elif kind == "trickle":
            self._trickle(BODY[:400], every=0.05, limit=8.0)
        elif kind == "hang" and n == 1:
            self._trickle(BODY, every=0.2, limit=20.0)
        elif kind == "404":
            self.send_error(404)
        elif kind == "flaky" and n == 1:
            self.send_error(500)
        elif kind == "stall":
            time.sleep(1.5)
            self._send(BODY)
        elif kind == "truncate":
            self._send(BODY[: len(BODY) // 2], length=len(BODY))
            self.close_connection = True
        elif kind == "corrupt":
            self._send(CORRUPT)
        elif kind == "slow":
            time.sleep(1.0)
            self._send(BODY)
        else:
            self._send(BODY)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    _Handler.hits = {}
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler.hits
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def zoo_home(tmp_path, monkeypatch):
    home = tmp_path / "zoo_home"
    monkeypatch.setenv("ZOO_HOME", str(home))
    # The user's own Hugging Face and torch.hub caches stay out of the tests.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for var in ("ZOO_OFFLINE", "ZOO_MIRROR", "ZOO_DOWNLOAD_RETRIES", "ZOO_DOWNLOAD_TIMEOUT",
                "ZOO_DOWNLOAD_DEADLINE", "HF_HUB_CACHE",
                "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    return home


FAST = dict(progress=False, retries=3, backoff=0.01, timeout=5)


def _leftovers(home: Path) -> list[str]:
    return sorted(p.name for p in home.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def test_cache_dir_resolution(monkeypatch, tmp_path):
    assert dl.cache_dir() == tmp_path / "zoo_home"
    monkeypatch.delenv("ZOO_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dl.cache_dir() == tmp_path / "xdg" / "zoo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert dl.cache_dir() == Path.home() / ".cache" / "zoo"


def test_good_download_is_cached_and_verified(server, zoo_home):
    base, hits = server
    path = dl.download(f"{base}/ok/models/w-{SHA[:8]}.pth", sha256=SHA, **FAST)
    assert path == zoo_home / "checkpoints" / f"127.0.0.1_{base.rsplit(':', 1)[1]}" / "ok" / "models" / f"w-{SHA[:8]}.pth"
    assert path.read_bytes() == BODY
    # second call: served from the cache, no request; a hash prefix is accepted too
    assert dl.download(f"{base}/ok/models/w-{SHA[:8]}.pth", sha256=SHA[:8], **FAST) == path
    assert hits == {f"/ok/models/w-{SHA[:8]}.pth": 1}
    assert _leftovers(zoo_home) == [path.name]  # no temp file, no sidecar (the catalog has the hash)


def test_corrupt_body_raises_and_leaves_nothing(server, zoo_home):
    base, _ = server
    url = f"{base}/corrupt/w.pth"
    with pytest.raises(dl.HashMismatchError) as e:
        dl.download(url, sha256=SHA, **FAST)
    actual = hashlib.sha256(CORRUPT).hexdigest()
    assert SHA in str(e.value) and actual in str(e.value) and url in str(e.value)
    assert _leftovers(zoo_home) == []


def test_truncated_transfer_retried_then_fails_cleanly(server, zoo_home):
    base, hits = server
    with pytest.raises(dl.DownloadError, match="3 times") as e:
        dl.download(f"{base}/truncate/w.pth", sha256=SHA, **FAST)
    assert "ZOO_MIRROR" in str(e.value)
    assert hits["/truncate/w.pth"] == 3
    assert _leftovers(zoo_home) == []


def test_404_is_not_retried_and_says_what_to_do(server, zoo_home):
    base, hits = server
    with pytest.raises(dl.DownloadError, match="404") as e:
        dl.download(f"{base}/404/w.pth", **FAST)
    msg = str(e.value)
    assert "ZOO_MIRROR" in msg and "ZOO_OFFLINE" in msg and "pretrained='<local path>'" in msg
    assert hits["/404/w.pth"] == 1
    assert _leftovers(zoo_home) == []


def test_server_error_then_ok_is_retried(server):
    base, hits = server
    path = dl.download(f"{base}/flaky/w.pth", sha256=SHA, **FAST)
    assert path.read_bytes() == BODY and hits["/flaky/w.pth"] == 2


def test_stalled_server_times_out_with_clear_error(server, zoo_home):
    base, hits = server
    with pytest.raises(dl.DownloadError, match="(?i)timeout|timed out"):
        dl.download(f"{base}/stall/w.pth", sha256=SHA, progress=False, retries=2, backoff=0.01, timeout=0.3)
    assert hits["/stall/w.pth"] == 2
    assert _leftovers(zoo_home) == []


def test_offline_mode_never_touches_network(server, zoo_home, monkeypatch):
    base, hits = server
    url = f"{base}/ok/w.pth"
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(dl.OfflineError) as e:
        dl.download(url, sha256=SHA, **FAST)
    assert str(dl.cache_path(url)) in str(e.value) and url in str(e.value)
    assert hits == {}
    monkeypatch.delenv("ZOO_OFFLINE")
    dl.download(url, sha256=SHA, **FAST)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    assert dl.download(url, sha256=SHA, **FAST).read_bytes() == BODY  # cached files still load offline
    assert hits == {"/ok/w.pth": 1}


def test_mirror_rewrites_host_and_path(server, zoo_home, monkeypatch):
    base, hits = server
    monkeypatch.setenv("ZOO_MIRROR", f"{base}/mirror/")
    url = "https://download.example.invalid/models/w-1234.pth"
    assert dl.mirror_url(url) == f"{base}/mirror/download.example.invalid/models/w-1234.pth"
    path = dl.download(url, sha256=SHA, **FAST)
    assert path == zoo_home / "checkpoints" / "download.example.invalid" / "models" / "w-1234.pth"
    assert hits == {"/mirror/download.example.invalid/models/w-1234.pth": 1}


def test_file_mirror(tmp_path, monkeypatch, zoo_home):
    mirror = tmp_path / "mirror"
    (mirror / "example.invalid" / "m").mkdir(parents=True)
    (mirror / "example.invalid" / "m" / "w.pth").write_bytes(BODY)
    monkeypatch.setenv("ZOO_MIRROR", mirror.as_uri())
    assert dl.download("https://example.invalid/m/w.pth", sha256=SHA, **FAST).read_bytes() == BODY


def test_hash_recorded_on_first_download_and_checked_later(server, zoo_home):
    base, _ = server
    url = f"{base}/ok/nohash.pth"
    path = dl.download(url, **FAST)
    side = path.with_name(path.name + ".sha256")
    assert side.read_text().split()[0] == SHA
    path.write_bytes(BODY[:1000])  # the cached file goes bad
    with pytest.raises(dl.HashMismatchError, match="recorded at first download"):
        dl.download(url, **FAST)
    assert not path.exists() and not side.exists()  # removed, so the next call downloads again
    assert dl.download(url, **FAST).read_bytes() == BODY


def test_verify_cache_and_cli(server, zoo_home, capsys):
    base, _ = server
    good = dl.download(f"{base}/ok/a.pth", **FAST)
    bad = dl.download(f"{base}/ok/b.pth", **FAST)
    assert cli(["verify"]) == 0
    bad.write_bytes(b"tampered")
    status = {p.name: s for p, s, _ in dl.verify_cache()}
    assert status == {good.name: "ok", bad.name: "mismatch"}
    assert cli(["verify"]) == 1
    assert "mismatch" in capsys.readouterr().out


# Children load zoo/weights/download.py (stdlib only, with its sibling formats.py) as a package of its
# own, without zoo/__init__.py and torch, so they start fast.
_LOAD = """
import importlib, os, sys, types
pkg = types.ModuleType("zoo_weights"); pkg.__path__ = [os.path.dirname(sys.argv[1])]
sys.modules["zoo_weights"] = pkg
mod = importlib.import_module("zoo_weights.download")
"""
_CHILD = _LOAD + """
p = mod.download(sys.argv[2], sha256=sys.argv[3], progress=False, retries=1, timeout=10)
print(p)
"""


def test_two_processes_download_once(server, zoo_home):
    """DDP ranks asking at once: one request served, both get the complete file."""
    base, hits = server
    url = f"{base}/slow/shared.pth"
    cmd = [sys.executable, "-c", _CHILD, dl.__file__, url, SHA]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
             for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {o[0].strip() for o in outs}
    assert paths == {str(dl.cache_path(url))}
    assert Path(paths.pop()).read_bytes() == BODY
    assert hits == {"/slow/shared.pth": 1}


def test_lock_waiter_sees_finished_file(server, zoo_home):
    """Threads in one process: the second waits on the lock and reuses the first's file."""
    base, hits = server
    url = f"{base}/slow/threads.pth"
    results, errors = [], []

    def run():
        try:
            results.append(dl.download(url, sha256=SHA, **FAST))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=run) for _ in range(2)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors and len(set(results)) == 1 and hits == {"/slow/threads.pth": 1}


# --- caches users already have: the Hugging Face hub's and torch.hub's ---------------------------
def _file_requests(hits: dict) -> dict:
    # huggingface_hub may also ask its endpoint for client metadata (/api/...); only file requests count.
    return {k: v for k, v in hits.items() if "/api/" not in k}


def _hf_snapshot(hub: Path, body: bytes = BODY, *, blob: bool = False) -> Path:
    """``models--timm--resnet18.a1_in1k`` laid out by hand: refs/main -> a snapshot holding the file
    (as a real file, or as huggingface_hub writes it: a symlink to ``blobs/<sha256>``)."""
    repo = hub / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT / "model.safetensors"
    snap.parent.mkdir(parents=True)
    if blob:
        (repo / "blobs").mkdir()
        (repo / "blobs" / SHA).write_bytes(body)
        snap.symlink_to(Path("..", "..", "blobs", SHA))
    else:
        snap.write_bytes(body)
    return snap


def test_hf_cache_is_used_without_a_request(server, zoo_home, tmp_path, monkeypatch):
    base, hits = server
    monkeypatch.setenv("HF_ENDPOINT", base)  # were the hub asked, the local server would see it
    snap = _hf_snapshot(tmp_path / "hf_home" / "hub")
    assert dl.download(HF_URL, sha256=SHA, **FAST) == snap
    # No catalog digest (timm entries have none): recorded beside zoo's cache path, checked next time.
    assert dl.download(HF_URL, **FAST) == snap
    assert dl.cache_path(HF_URL).with_name("model.safetensors.sha256").read_text().split()[0] == SHA
    assert hits == {} and not dl.cache_path(HF_URL).exists()  # no request, no second copy
    snap.write_bytes(CORRUPT)
    with pytest.raises(dl.HashMismatchError, match="recorded at first use") as e:
        dl.download(HF_URL, **FAST)
    assert str(snap) in str(e.value) and snap.exists()  # another tool's cache: reported, never deleted


def test_hf_cache_honours_hf_hub_cache_and_checks_the_blob_digest(server, zoo_home, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    snap = _hf_snapshot(tmp_path / "elsewhere", blob=True)
    assert dl.download(HF_URL, **FAST) == snap and dl.find_cached(HF_URL) == snap
    Path(os.path.realpath(snap)).write_bytes(CORRUPT)  # the blob no longer has the digest it is named by
    with pytest.raises(dl.HashMismatchError, match="LFS sha256"):
        dl.download(HF_URL, **FAST)


def test_hf_hub_offline_names_the_file_and_makes_no_request(server, zoo_home, tmp_path, monkeypatch):
    base, hits = server
    monkeypatch.setenv("HF_ENDPOINT", base)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(dl.OfflineError) as e:
        dl.download(HF_URL, **FAST)
    msg = str(e.value)
    assert "HF_HUB_OFFLINE" in msg and "model.safetensors" in msg and HF_URL in msg
    assert str(tmp_path / "hf_home" / "hub") in msg and str(dl.cache_path(HF_URL)) in msg
    snap = _hf_snapshot(tmp_path / "hf_home" / "hub")
    assert dl.download(HF_URL, sha256=SHA, **FAST) == snap
    assert hits == {}


def test_hf_file_not_cached_is_fetched_by_huggingface_hub_into_its_cache(server, zoo_home, tmp_path, monkeypatch):
    base, hits = server
    monkeypatch.setenv("HF_ENDPOINT", base)
    path = dl.download(HF_URL, **FAST)
    hub = tmp_path / "hf_home" / "hub" / "models--timm--resnet18.a1_in1k"
    assert path == hub / "snapshots" / COMMIT / "model.safetensors" and path.read_bytes() == BODY
    assert Path(os.path.realpath(path)).name == SHA  # stored as huggingface_hub stores it, shared with timm
    assert dl.download(HF_URL, sha256=SHA, **FAST) == path
    assert _file_requests(hits) == {"HEAD /timm/resnet18.a1_in1k/resolve/main/model.safetensors": 1,
                    "/timm/resnet18.a1_in1k/resolve/main/model.safetensors": 1}
    assert not dl.cache_path(HF_URL).exists()


def test_hf_download_errors_say_what_to_do(server, zoo_home, monkeypatch):
    base, hits = server
    monkeypatch.setenv("HF_ENDPOINT", f"{base}/404")
    with pytest.raises(dl.DownloadError, match="huggingface_hub failed \\(HTTP 404") as e:
        dl.download(HF_URL, **FAST)
    assert HF_URL in str(e.value) and "ZOO_MIRROR" in str(e.value) and "pretrained='<local path>'" in str(e.value)
    assert _file_requests(hits) == {"HEAD /404/timm/resnet18.a1_in1k/resolve/main/model.safetensors": 1}


def test_mirror_serves_hf_files_too(tmp_path, monkeypatch, zoo_home):
    mirror = tmp_path / "mirror"
    target = mirror / "huggingface.co" / "timm" / "resnet18.a1_in1k" / "resolve" / "main" / "model.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(BODY)
    monkeypatch.setenv("ZOO_MIRROR", mirror.as_uri())
    assert dl.download(HF_URL, sha256=SHA, **FAST) == dl.cache_path(HF_URL)


def test_torch_hub_cache_is_used_without_a_request(server, zoo_home, tmp_path):
    import torch.hub

    base, hits = server
    url = f"{base}/ok/models/w-{SHA[:8]}.pth"
    assert Path(torch.hub.get_dir()) == tmp_path / "torch_home" / "hub"
    th = tmp_path / "torch_home" / "hub" / "checkpoints" / f"w-{SHA[:8]}.pth"
    th.parent.mkdir(parents=True)
    th.write_bytes(BODY)
    assert dl.download(url, sha256=SHA[:8], **FAST) == th and dl.find_cached(url) == th
    assert hits == {} and not dl.cache_path(url).exists()
    with pytest.raises(dl.HashMismatchError, match="torch_home"):
        dl.download(url, sha256="deadbeef", **FAST)
    assert th.exists()


def test_offline_message_names_torch_hub_place_too(zoo_home, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    with pytest.raises(dl.OfflineError, match="ZOO_OFFLINE") as e:
        dl.download(url, **FAST)
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in str(e.value)


def test_two_processes_fetch_an_hf_file_once(server, zoo_home):
    """DDP ranks asking at once for a hub file: huggingface_hub is called by one, the other reuses its file."""
    base, hits = server
    url = "https://huggingface.co/timm/slow_model/resolve/main/model.safetensors"
    cmd = [sys.executable, "-c", _CHILD, dl.__file__, url, SHA]
    env = {**os.environ, "HF_ENDPOINT": base}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len({o[0].strip() for o in outs}) == 1
    assert _file_requests(hits) == {"HEAD /timm/slow_model/resolve/main/model.safetensors": 1,
                    "/timm/slow_model/resolve/main/model.safetensors": 1}


# --- nothing bad is cached; query strings; deadline; killed downloads; read-only caches ---------
def test_truncated_body_without_content_length_is_not_cached(server, zoo_home):
    """No Content-Length and no published hash: only the file's own structure shows it was cut short."""
    base, hits = server
    url = f"{base}/nolen/w.pth"
    with pytest.raises(dl.DownloadError) as e:
        dl.download(url, **FAST)
    msg = str(e.value)
    assert url in msg and "truncated" in msg
    assert "HTTP 200" in msg and "application/octet-stream" in msg and f"{len(ZIP_BODY) // 2} bytes" in msg
    assert hits["/nolen/w.pth"] == 3  # a transfer cut short is worth retrying
    assert _leftovers(zoo_home) == []
    with pytest.raises(dl.DownloadError):  # nothing was cached: the next call asks the server again
        dl.download(url, **FAST)
    assert hits["/nolen/w.pth"] == 6


def test_html_error_page_served_with_200_is_not_cached(server, zoo_home):
    base, hits = server
    url = f"{base}/html/model.safetensors"
    with pytest.raises(dl.DownloadError) as e:
        dl.download(url, **FAST)
    msg = str(e.value)
    assert url in msg and "HTML" in msg and "Sign in" in msg
    assert "HTTP 200" in msg and "text/html" in msg and f"{len(HTML)} bytes" in msg
    assert hits["/html/model.safetensors"] == 1  # the server answered; asking again would get the same page
    assert _leftovers(zoo_home) == []
    with pytest.raises(dl.DownloadError):
        dl.download(url, **FAST)
    assert hits["/html/model.safetensors"] == 2


def test_torch_zip_without_hash_is_checked_and_cached(server, zoo_home, monkeypatch):
    base, hits = server
    # /ok serves BODY: make it a complete torch zip archive (a .pth as torch.save writes it)
    monkeypatch.setattr(sys.modules[__name__], "BODY", ZIP_BODY)
    path = dl.download(f"{base}/ok/z.pth", **FAST)
    assert path.read_bytes() == ZIP_BODY and path.with_name("z.pth.sha256").is_file()


def test_unreadable_file_already_cached_is_fetched_again_and_flagged_by_verify(server, zoo_home, capsys):
    """A cache poisoned before this check existed heals itself; verify does not call it ok."""
    base, hits = server
    url = f"{base}/ok/w.pth"
    path = dl.cache_path(url)
    path.parent.mkdir(parents=True)
    path.write_bytes(HTML)
    path.with_name("w.pth.sha256").write_text(f"{hashlib.sha256(HTML).hexdigest()}  w.pth\n")
    assert cli(["verify"]) == 1
    out = capsys.readouterr().out
    assert "unreadable" in out and "HTML" in out
    assert dl.download(url, **FAST).read_bytes() == BODY and hits == {"/ok/w.pth": 1}
    assert cli(["verify"]) == 0


def test_query_string_is_part_of_the_cache_key(server, zoo_home, tmp_path):
    base, hits = server
    # torch.hub names files by the URL path alone: a file there cannot stand for one query
    th = tmp_path / "torch_home" / "hub" / "checkpoints" / "q"
    th.parent.mkdir(parents=True)
    th.write_bytes(BODY)
    a = dl.download(f"{base}/query/q?f=a", **FAST)
    b = dl.download(f"{base}/query/q?f=b", **FAST)
    assert a != b and th not in (a, b)
    assert a.read_bytes() == QUERY_BODIES["f=a"] and b.read_bytes() == QUERY_BODIES["f=b"]
    assert dl.download(f"{base}/query/q?f=a", **FAST) == a
    assert hits == {"/query/q?f=a": 1, "/query/q?f=b": 1}
    # the name keeps its suffix (safetensors are recognised by it) and shows the query
    p = dl.cache_path("https://example.org/m/model.safetensors?download=true")
    assert p.suffix == ".safetensors" and "download=true" in p.name
    assert p != dl.cache_path("https://example.org/m/model.safetensors")
    assert dl.cache_path("https://example.org/m/x?a=1&b=2") != dl.cache_path("https://example.org/m/x?a=1_b=2")


def test_trickling_body_is_cut_by_the_total_deadline(server, zoo_home, monkeypatch):
    """Each read arrives within the socket timeout, so only a deadline on the whole transfer ends it."""
    base, hits = server
    monkeypatch.setenv("ZOO_DOWNLOAD_DEADLINE", "1")
    with pytest.raises(dl.DownloadError, match="deadline") as e:
        dl.download(f"{base}/trickle/w.pth", sha256=SHA, **FAST)
    assert "ZOO_DOWNLOAD_DEADLINE" in str(e.value) and "of 400 bytes" in str(e.value)
    assert hits["/trickle/w.pth"] == 1  # a retry would only repeat it
    monkeypatch.delenv("ZOO_DOWNLOAD_DEADLINE")
    with pytest.raises(dl.DownloadError, match="deadline"):
        dl.download(f"{base}/trickle/x.pth", deadline=0.5, **FAST)
    assert hits["/trickle/x.pth"] == 1
    assert _leftovers(zoo_home) == []


def _downloading_child(url: str) -> subprocess.Popen:
    cmd = [sys.executable, "-c", _CHILD, dl.__file__, url, SHA]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def _wait_for_part(home: Path, proc: subprocess.Popen) -> list[Path]:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        parts = list(home.rglob("*.part"))
        if parts:
            return parts
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    pytest.fail("the child never started writing")


def test_sigterm_during_download_leaves_no_part_file(server, zoo_home):
    base, _ = server
    proc = _downloading_child(f"{base}/hang/w.pth")
    _wait_for_part(zoo_home, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM, err  # still dies of the signal, as without zoo
    assert list(zoo_home.rglob("*.part")) == []


def test_part_file_of_a_killed_download_is_cleaned_by_the_next(server, zoo_home):
    base, hits = server
    url = f"{base}/hang/w.pth"
    proc = _downloading_child(url)
    stale = _wait_for_part(zoo_home, proc)
    proc.kill()  # SIGKILL: nothing runs, the .part stays
    proc.communicate(timeout=30)
    assert all(p.exists() for p in stale)
    assert dl.download(url, sha256=SHA, **FAST).read_bytes() == BODY and hits["/hang/w.pth"] == 2
    assert list(zoo_home.rglob("*.part")) == []


_RO_CHILD = _LOAD + """
try:
    mod.download(sys.argv[2], progress=False, retries=1, timeout=5)
except mod.DownloadError as e:
    print("DownloadError:", e)
"""


def _no_root_override() -> list[str] | None:
    """A command prefix running a child without root's permission override (tests run as root)."""
    if os.geteuid() != 0:
        return []
    cmd = [shutil.which("setpriv") or "setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    try:
        ok = subprocess.run([*cmd, "true"], capture_output=True).returncode == 0
    except OSError:
        ok = False
    return cmd if ok else None


def test_read_only_cache_gives_a_clear_error(server, zoo_home, monkeypatch):
    base, hits = server
    in_folder = f"{base}/ok/w.pth"  # its folder exists: the lock file cannot be created
    new_folder = f"{base}/ok/new/w.pth"  # its folder cannot be created
    dl.cache_path(in_folder).parent.mkdir(parents=True)
    dirs = [zoo_home, *(p for p in zoo_home.rglob("*") if p.is_dir())]
    prefix = _no_root_override()
    for d in dirs:
        d.chmod(0o555)
    try:
        for url in (in_folder, new_folder):
            if prefix is not None:
                res = subprocess.run([*prefix, sys.executable, "-c", _RO_CHILD, dl.__file__, url],
                                     capture_output=True, text=True, env=os.environ.copy(), timeout=60)
                out = res.stdout + res.stderr
            else:  # root without setpriv: make the cache refuse writes by hand
                def refuse(*args, **kwargs):
                    raise PermissionError(13, "Permission denied", str(args[0]))

                with monkeypatch.context() as m:
                    m.setattr(dl, "open", lambda f, mode="r", *a, **k: refuse(f) if "r" != mode[:1] else open(f, mode, *a, **k),
                              raising=False)
                    m.setattr(Path, "mkdir", lambda self, *a, **k: refuse(self))
                    try:
                        dl.download(url, **FAST)
                        out = ""
                    except dl.DownloadError as e:
                        out = f"DownloadError: {e}"
            assert out.startswith("DownloadError:") and "Traceback" not in out, out
            assert "not writable" in out and str(zoo_home) in out and "ZOO_HOME" in out, out
    finally:
        for d in dirs:
            d.chmod(0o755)
    assert hits == {}  # nothing was fetched that could not be kept
