"""Downloads against a local HTTP server: cache, hashes, retries, errors, offline, mirror, concurrency."""
from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from zoo.weights import download as dl
from zoo.weights.__main__ import main as cli

BODY = os.urandom(300_000)
SHA = hashlib.sha256(BODY).hexdigest()
# Flip the last byte (not "replace it by x": 1 random body in 256 already ends in x).
CORRUPT = BODY[:-1] + bytes([BODY[-1] ^ 0xFF])
COMMIT = "0123456789abcdef0123456789abcdef01234567"
HF_URL = "https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Behaviour by path: /ok, /404, /flaky (500 once, then ok), /stall, /truncate, /corrupt, /slow."""

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

    def do_GET(self):
        with self.lock:
            n = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        kind = self.path.split("/")[1]
        if kind == "404":
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
    for var in ("ZOO_OFFLINE", "ZOO_MIRROR", "ZOO_DOWNLOAD_RETRIES", "ZOO_DOWNLOAD_TIMEOUT", "HF_HUB_CACHE",
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


_CHILD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("zoo_download", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
p = mod.download(sys.argv[2], sha256=sys.argv[3], progress=False, retries=1, timeout=10)
print(p)
"""


def test_two_processes_download_once(server, zoo_home):
    """DDP ranks asking at once: one request served, both get the complete file."""
    base, hits = server
    url = f"{base}/slow/shared.pth"
    # Load download.py on its own (stdlib only) so the children start fast.
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
