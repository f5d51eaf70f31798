"""Weights resolution: hand-built HF cache offline, fallback from a dead endpoint, refusal of corrupt files and of
edited or unfingerprinted configs."""

import hashlib
import json
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
from mriseg.model import create_model
from mriseg.postprocessing import PostprocessingConfig
from mriseg.preprocessing import PreprocessingConfig
from mriseg.weights.bundle import (
    fingerprint_of,
    load_model,
    load_segmenter,
    model_version,
    read_config,
    recipe_of,
    save_bundle,
    sha256_of,
)
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


def copy_of_shipped(folder: Path, **changes) -> Path:
    """A copy of the shipped weights folder whose config.json has ``changes`` (None: the key removed)."""
    shutil.copytree(WEIGHTS, folder)
    config = read_config(folder)
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def test_shipped_config_is_fingerprinted_and_its_version_is_the_fingerprint():
    config = read_config(WEIGHTS)
    assert config["weights_sha256"] == sha256_of(WEIGHTS / "model.safetensors")
    assert config["fingerprint_sha256"] == fingerprint_of(config)
    assert model_version(config) == config["fingerprint_sha256"][:12]
    assert model_version(config) in (WEIGHTS / "README.md").read_text()  # the model card shows it


def test_save_bundle_fingerprints_what_decides_the_output(tmp_path):
    model = create_model({"base_width": 4, "depth": 2})
    folder = save_bundle(tmp_path / "w", model, PreprocessingConfig(grid_size=64), PostprocessingConfig(),
                         {"note": "kept"})
    loaded, config = load_model(folder)
    assert config["fingerprint_sha256"] == fingerprint_of(config) and config["note"] == "kept"
    assert recipe_of(config) == {"note": "kept"}  # a re-export writes a fresh fingerprint, never carries the old
    threshold = fingerprint_of({**config, "postprocessing": {**config["postprocessing"], "threshold": 0.3}})
    grid = fingerprint_of({**config, "preprocessing": {**config["preprocessing"], "grid_size": 128}})
    assert len({threshold, grid, config["fingerprint_sha256"]}) == 3


@pytest.mark.parametrize("section", ["preprocessing", "postprocessing"])
def test_a_config_edited_after_export_is_refused(tmp_path, section):
    shipped = read_config(WEIGHTS)
    key = "grid_size" if section == "preprocessing" else "threshold"
    edited = {**shipped[section], key: 128 if key == "grid_size" else 0.2}
    folder = copy_of_shipped(tmp_path / "weights", **{section: edited})
    with pytest.raises(InputError, match="config.json was edited after export: its preprocessing/post-processing "
                                         "no longer match the fingerprint"):
        load_model(folder)


@pytest.mark.parametrize("key", ["weights_sha256", "fingerprint_sha256"])
def test_a_config_without_its_checks_is_refused(tmp_path, key):
    folder = copy_of_shipped(tmp_path / "weights", **{key: None})
    with pytest.raises(InputError, match=rf"config.json records no {key}.*python -m mriseg export"):
        load_model(folder)


def test_settings_outside_the_fingerprint_may_change(tmp_path):
    folder = copy_of_shipped(tmp_path / "weights", data="relabelled", validation_metrics={})
    _, config = load_model(folder)
    assert model_version(config) == model_version(read_config(WEIGHTS))
