"""Weights resolution: hand-built HF cache offline, fallback from a dead endpoint, refusal of corrupt files."""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import REPO_ROOT, WEIGHTS

from mriseg.errors import InputError
from mriseg.weights.bundle import load_model, load_segmenter
from mriseg.weights.hub import resolve_weights

REPO = "mriseg-test/unet-lgg"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def build_hf_cache(cache: Path, files: list[Path]) -> Path:
    """The real HF cache layout: blobs named by hash, a snapshot of symlinks, refs/main naming the commit."""
    repo_dir = cache / f"models--{REPO.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / COMMIT
    (repo_dir / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    for file in files:
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, repo_dir / "blobs" / digest)
        (snapshot / file.name).symlink_to(Path("../../blobs") / digest)
    return snapshot


@pytest.fixture
def hf_cache(tmp_path):
    build_hf_cache(tmp_path / "hub", [WEIGHTS / "config.json", WEIGHTS / "model.safetensors"])
    return tmp_path / "hub"


def test_not_configured_uses_bundled():
    source = resolve_weights(repo_id="")
    assert source.kind == "bundled" and source.folder == WEIGHTS


@pytest.mark.slow
def test_offline_resolves_from_hand_built_cache(hf_cache, tmp_path):
    """As a user configures it: environment variables only, HF_HUB_OFFLINE=1, in a fresh process."""
    script = (
        "from mriseg.weights.hub import resolve_weights; from mriseg.weights.bundle import load_segmenter; "
        "source = resolve_weights(); segmenter = load_segmenter(source.folder, device='cpu'); "
        "print(source.kind, source.folder)"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hf_cache),
               MRISEG_HF_REPO=REPO, MRISEG_HF_REVISION=COMMIT)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    kind, folder = result.stdout.split()
    assert kind == "hf-cache"
    assert Path(folder) == hf_cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT


def test_offline_branch_name_resolves_through_refs(hf_cache):
    source = resolve_weights(REPO, revision="main", cache_dir=hf_cache, offline=True)
    assert source.kind == "hf-cache" and source.folder.name == COMMIT


def test_offline_and_not_cached_falls_back_to_bundled(tmp_path):
    source = resolve_weights("someone/absent", cache_dir=tmp_path, offline=True)
    assert source.kind == "bundled"


@pytest.fixture
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never answers (a black-holed Hub)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()


@pytest.mark.slow
def test_unreachable_hub_falls_back_within_two_seconds(tmp_path, silent_server):
    started = time.monotonic()
    source = resolve_weights(REPO, revision=COMMIT, cache_dir=tmp_path, endpoint=silent_server, offline=False)
    assert time.monotonic() - started < 2.5
    assert source.kind == "bundled"


@pytest.mark.slow
def test_refused_connection_falls_back_to_cache(hf_cache):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = resolve_weights(REPO, revision=COMMIT, cache_dir=hf_cache, endpoint=f"http://127.0.0.1:{port}",
                             offline=False)
    assert source.kind == "hf-cache"


def test_corrupted_weights_are_refused(tmp_path):
    folder = tmp_path / "weights"
    shutil.copytree(WEIGHTS, folder)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256"):
        load_segmenter(folder, device="cpu")


def test_missing_config_is_explained(tmp_path):
    with pytest.raises(InputError, match="config.json"):
        load_model(tmp_path)
