"""GPU speed of the shipped model on a BraTS-size volume (155 slices of 240x240), and agreement with the CPU.

Times, per slice and as the median of ``--repeats`` runs after a warm-up:

- end to end through ``Segmenter.predict`` (CPU preprocessing, GPU forward passes, CPU mapping back), in batches
  of 16 slices and with the whole volume in one batch;
- where that time goes: preprocessing and mapping back on the CPU, the forward pass alone on the GPU;
- the forward pass of the whole volume as one batch: eager, ``torch.compile`` (kernels fused by Inductor) and
  ``torch.compile(mode="reduce-overhead")`` (CUDA graphs, which replay the kernel launches that bind a network this
  small), in bfloat16 autocast where the GPU has it.

Then the masks of the GPU and of the CPU (float32) are compared: the run fails if their Dice is below 0.99.

Run from the repository root on a machine with a GPU:  .venv/bin/python benchmarks/gpu_benchmark.py
``--device cpu --slices 8`` runs the same steps on the CPU in seconds (a check that the script works).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mriseg.data.io import read_volume  # noqa: E402
from mriseg.evaluation.benchmark import median_seconds  # noqa: E402
from mriseg.metrics import dice  # noqa: E402
from mriseg.postprocessing import binarize  # noqa: E402
from mriseg.weights.bundle import load_segmenter  # noqa: E402

GALLERY_VOLUME = REPO_ROOT / "samples" / "TCGA_CS_4942_19970222_volume.tif"


def brats_size_volume(slices: int, side: int = 240) -> np.ndarray:
    """The gallery's 20-slice patient resized to ``side`` in plane and interpolated to ``slices`` slices."""
    volume = read_volume(GALLERY_VOLUME.read_bytes(), GALLERY_VOLUME.name).pixels.astype(np.float32)
    volume = np.stack([cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR) for image in volume])
    positions = np.linspace(0, len(volume) - 1, slices)
    below = np.floor(positions).astype(int)
    above = np.minimum(below + 1, len(volume) - 1)
    weight = (positions - below)[:, None, None]
    return (1 - weight) * volume[below] + weight * volume[above]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(REPO_ROOT / "weights"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--slices", type=int, default=155)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run this on a machine with a GPU, or pass --device cpu to check the script")
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    volume = brats_size_volume(args.slices)
    slices = len(volume)
    segmenter = load_segmenter(args.weights, device=device)
    print(f"{name}; torch {torch.__version__}; {slices} slices of {volume.shape[1]}x{volume.shape[2]}; "
          f"{segmenter.device_label}; median of {args.repeats} runs")

    def timing(label: str, run: Callable[[], object]) -> float:
        ms = 1000 * median_seconds(run, args.repeats, device) / slices
        print(f"  {label:<58} {ms:7.2f} ms per slice  ({1000 / ms:6.0f} slices/s)")
        return ms

    print("end to end (Segmenter.predict):")
    for batch_size in (16, slices):
        segmenter.batch_size = batch_size
        timing(f"batches of {batch_size} slices", lambda: segmenter.predict(volume))

    print("where the time goes (whole volume in one batch):")
    preprocessor = segmenter.preprocessor
    grid = preprocessor.volume_to_input(volume)
    timing("preprocessing on the CPU (normalise, resize to the grid)", lambda: preprocessor.volume_to_input(volume))
    probabilities, _ = segmenter.predict_grid(grid)
    timing("mapping probabilities back to 240x240 on the CPU",
           lambda: preprocessor.grid_to_volume(probabilities, *volume.shape[1:]))
    batch = torch.from_numpy(grid).to(device).contiguous(memory_format=segmenter.memory_format)

    def forward(model: torch.nn.Module) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=segmenter.bf16):
                return torch.sigmoid(model(batch).float())
        return run

    timing("forward pass, eager", forward(segmenter.folded_model))
    if not args.no_compile:
        for mode in ("default", "reduce-overhead"):
            try:
                compiled = torch.compile(segmenter.folded_model, mode=mode)
                timing(f"forward pass, torch.compile(mode={mode!r})", forward(compiled))
            except Exception as error:  # a missing compiler toolchain should not hide the other numbers
                print(f"  torch.compile(mode={mode!r}) failed: {type(error).__name__}: {error}".splitlines()[0])

    segmenter.batch_size = 16
    here = binarize(segmenter.predict(volume).mean, segmenter.postprocessing)
    cpu = load_segmenter(args.weights, device="cpu", precision="fp32")
    on_cpu = binarize(cpu.predict(volume).mean, cpu.postprocessing)
    agreement = dice(here, on_cpu)
    print(f"masks on {device.type} ({segmenter.device_label}) against the CPU in float32: Dice {agreement:.4f} "
          f"({int(here.sum())} and {int(on_cpu.sum())} tumour pixels)")
    if agreement < 0.99:
        print("FAIL: the masks differ more than a change of number format explains (Dice < 0.99)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
