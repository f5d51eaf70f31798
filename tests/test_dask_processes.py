"""``mriseg predict --scheduler`` against a Dask scheduler and worker started from the venv's own executables, as a
cluster user starts them after the README's set-up: separate processes that import the installed mriseg."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from browser_helpers import free_port
from helpers import REPO_ROOT, SAMPLES

pytestmark = pytest.mark.slow

DASK = Path(sys.executable).parent / "dask"


def predict(folder: Path, out: Path, *extra: str) -> None:
    result = subprocess.run([sys.executable, "-m", "mriseg", "predict", str(folder), "--out", str(out), "--device",
                             "cpu", "--no-progress", *extra], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr


def masks(out: Path) -> dict[str, np.ndarray]:
    return {path.name: cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in sorted(out.rglob("*.png"))}


def test_dask_scheduler_and_worker_processes_write_the_masks_of_one_process(tmp_path, slice_samples):
    folder = tmp_path / "scans"
    folder.mkdir()
    for entry in slice_samples[:2]:
        shutil.copy(SAMPLES / entry["image"], folder / entry["image"])
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    # Outside the repository and without PYTHONPATH: the worker imports the mriseg the set-up installed.
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    scheduler = subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--dashboard-address", ":0"], cwd=tmp_path, env=environment,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([str(DASK), "worker", address, "--nworkers", "1", "--nthreads", "1", "--host",
                               "127.0.0.1", "--no-dashboard"], cwd=tmp_path, env=environment,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_worker(address)
        predict(folder, tmp_path / "cluster", "--scheduler", address)
    finally:
        for process in (worker, scheduler):
            process.terminate()
            process.wait(timeout=30)
    predict(folder, tmp_path / "single")
    cluster, single = masks(tmp_path / "cluster"), masks(tmp_path / "single")
    assert len(single) == 2 and cluster.keys() == single.keys()
    for name, mask in single.items():
        np.testing.assert_array_equal(cluster[name], mask, err_msg=name)


def wait_for_worker(address: str, timeout: float = 120.0) -> None:
    from distributed import Client

    deadline = time.monotonic() + timeout
    while True:
        try:
            with Client(address, timeout=5) as client:
                client.wait_for_workers(1, timeout=timeout)
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
