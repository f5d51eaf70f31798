"""Speed of inference: latency per 256x256 slice and throughput on a volume, on CPU (and GPU when present)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from mriseg.inference import Segmenter


def median_seconds(run: Callable[[], object], repeats: int, device: torch.device | None = None) -> float:
    """Median wall time of ``run`` over ``repeats`` calls after one warm-up call (first calls pay for allocator and
    kernel selection); on a CUDA ``device`` each call is timed until the GPU has finished its work."""
    def timed() -> float:
        started = time.perf_counter()
        run()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    timed()
    return statistics.median(timed() for _ in range(repeats))


def benchmark(segmenter: Segmenter, size: int = 256, volume_slices: int = 32, repeats: int = 20) -> dict:
    """Median end-to-end latency (preprocess, forward, map back) of one slice, and slices/s on a volume.

    Results come back as NumPy arrays, so GPU timings include the device synchronisation.
    """
    rng = np.random.default_rng(0)
    one_slice = rng.integers(0, 255, (1, size, size)).astype(np.float32)
    volume = rng.integers(0, 255, (volume_slices, size, size)).astype(np.float32)
    latency = median_seconds(lambda: segmenter.predict(one_slice), repeats)
    volume_seconds = median_seconds(lambda: segmenter.predict(volume), max(3, repeats // 5))

    return {
        "device": segmenter.device_label,
        "threads": torch.get_num_threads(),
        "slice_size": size,
        "latency_ms_per_slice": 1000 * latency,
        "volume_slices": volume_slices,
        "volume_slices_per_second": volume_slices / volume_seconds,
    }
