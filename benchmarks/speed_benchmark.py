"""Float32 CPU speed against the field's usual model, side by side in one run (ratios, not absolute times, are what
carry over between machines).

The reference is a Buda-size U-Net (Buda et al. 2019, the LGG data set's own paper: 32 features in the first of
4 levels, 3 input channels, 7.8 M parameters) run in float32 on 256x256 slices, built from mriseg's own U-Net
class. Each mriseg model is timed end to end through ``Segmenter.predict`` (preprocessing, forward pass, mapping
back) in float32, as on a laptop without native bfloat16.

Run from the repository root:  .venv/bin/python benchmarks/speed_benchmark.py [--weights FOLDER ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mriseg.evaluation.benchmark import median_seconds  # noqa: E402
from mriseg.model import UNetConfig, create_model  # noqa: E402
from mriseg.weights.bundle import load_segmenter  # noqa: E402

SLICES = 16


def per_slice_ms(run, repeats: int) -> float:
    return 1000 * median_seconds(run, repeats) / SLICES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", nargs="*", default=[str(REPO_ROOT / "weights")],
                        help="weights folders to time (default: the shipped one)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    volume = rng.integers(0, 255, (SLICES, 256, 256)).astype(np.float32)
    reference = create_model(UNetConfig(in_channels=3, base_width=32, depth=4)).eval()
    parameters = sum(p.numel() for p in reference.parameters())
    # The reference gets the layout mriseg's Segmenter uses on a CPU (channels-last), so only the models differ.
    reference = reference.to(memory_format=torch.channels_last)
    batch = torch.from_numpy(np.repeat(volume[:, None], 3, axis=1) / 255).float()
    batch = batch.contiguous(memory_format=torch.channels_last)

    def run_reference() -> None:
        with torch.inference_mode():
            reference(batch)

    reference_ms = per_slice_ms(run_reference, args.repeats)
    print(f"{torch.get_num_threads()} threads; {SLICES} slices of 256x256 per call, float32")
    print(f"reference U-Net ({parameters / 1e6:.1f} M parameters): {reference_ms:.1f} ms per slice")
    for folder in args.weights:
        segmenter = load_segmenter(folder, device="cpu", precision="fp32")
        count = sum(p.numel() for p in segmenter.model.parameters())
        ms = per_slice_ms(lambda segmenter=segmenter: segmenter.predict(volume), args.repeats)
        print(f"{folder} ({count / 1e6:.2f} M parameters): {ms:.1f} ms per slice, {ms / reference_ms:.2f} of the "
              "reference")


if __name__ == "__main__":
    main()
