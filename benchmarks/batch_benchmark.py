"""Cases per minute of ``predict`` on a folder: in one process, and on a local Dask cluster of 1 and 2 workers.

Builds one folder (NIfTI volumes cut from the gallery patient, the gallery's PNG slices, a loose DICOM series),
segments it with the shipped model through :func:`mriseg.batch.run_batch` (what ``predict DIR`` runs): in this
process with PyTorch's threads and with one thread, then on local Dask clusters, and checks that the masks agree,
decoded, case by case. The single process loads and warms the model before the clock starts (as ``predict`` loads
it before its first case); a Dask run's time includes each worker loading it, but not the start of the cluster,
reported apart. Each Dask worker is a process with one thread.

Run from the repository root:  .venv/bin/python benchmarks/batch_benchmark.py --volumes 6 --slices 5
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from mriseg.batch import ModelSettings, cached_segmenter, dask_client, run_batch  # noqa: E402
from mriseg.data.io import read_mask, read_volume  # noqa: E402
from mriseg.weights.bundle import read_config  # noqa: E402

SAMPLES = REPO_ROOT / "samples"
WEIGHTS = REPO_ROOT / "weights"


def build_folder(root: Path, volumes: int, slices: int) -> int:
    """The benchmark folder; returns its number of cases."""
    from pydicom.uid import generate_uid

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from helpers import make_dicom

    pixels = read_volume((SAMPLES / "TCGA_CS_4942_19970222_volume.tif").read_bytes(), "volume.tif").pixels
    (root / "nifti").mkdir(parents=True)
    for index in range(volumes):
        start = index % (len(pixels) - slices + 1)
        ras = np.ascontiguousarray(np.transpose(pixels[start : start + slices, ::-1, ::-1], (2, 1, 0)))
        nib.save(nib.Nifti1Image(ras.astype(np.int16), np.diag([0.8, 0.8, 3.0, 1.0])),
                 root / "nifti" / f"patient{index:02d}.nii.gz")
    (root / "png").mkdir()
    pngs = sorted(path for path in SAMPLES.glob("*.png") if not path.name.endswith("_mask.png"))
    for path in pngs:
        shutil.copy(path, root / "png" / path.name)
    (root / "dicom").mkdir()
    uid = generate_uid()
    for index, image in enumerate(pixels[:slices]):
        (root / "dicom" / f"IM{index:04d}").write_bytes(
            make_dicom(image, instance=index + 1, series=uid, position=(-64.0, -64.0, 3.0 * index)))
    return volumes + len(pngs) + 1


def decoded_masks(out: Path) -> dict[str, np.ndarray]:
    return {path.relative_to(out).as_posix(): (np.asarray(nib.load(path).dataobj) if path.name.endswith(".nii.gz")
                                                else read_mask(path.read_bytes(), path.name))
            for path in sorted(out.rglob("*_mask.*"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=6, help="NIfTI volumes in the folder")
    parser.add_argument("--slices", type=int, default=5, help="slices per volume (and in the DICOM series)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Dask cluster sizes to time")
    args = parser.parse_args()

    config = read_config(WEIGHTS)
    settings = ModelSettings(weights=str(WEIGHTS), sha256=config.get("weights_sha256"), device="cpu")
    with tempfile.TemporaryDirectory(prefix="mriseg-batch-bench-") as scratch:
        root = Path(scratch)
        cases = build_folder(root / "archive", args.volumes, args.slices)
        print(f"folder: {cases} cases ({args.volumes} NIfTI volumes of {args.slices} slices, PNG slices, one DICOM "
              f"series of {args.slices} files)")
        results = {}

        segmenter = cached_segmenter(WEIGHTS, sha256=settings.sha256, device="cpu")
        segmenter.predict(np.random.default_rng(0).random((2, 256, 256), np.float32))  # first passes: slow kernels
        threads = torch.get_num_threads()
        for run_threads in sorted({threads, 1}, reverse=True):
            torch.set_num_threads(run_threads)
            label = f"single process, {run_threads} torch thread(s) ({segmenter.device_label})"
            out = root / f"single{run_threads}"
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # the per-case lines; the table is what counts
                report = run_batch([root / "archive"], out, settings=settings, progress=False)
            results[label] = (time.perf_counter() - start, report, out)
        torch.set_num_threads(threads)

        for workers in args.workers:
            started = time.perf_counter()
            with dask_client(workers=workers) as client:
                client.wait_for_workers(workers)
                startup = time.perf_counter() - started
                start = time.perf_counter()
                out = root / f"dask{workers}"
                with contextlib.redirect_stdout(io.StringIO()):
                    report = run_batch([root / "archive"], out, settings=settings, client=client, progress=False)
                label = f"Dask LocalCluster, {workers} worker(s) x 1 thread (cluster start {startup:.1f} s)"
                results[label] = (time.perf_counter() - start, report, out)

        reference = None
        print(f"\n{'run':75s} {'seconds':>8s} {'cases/min':>10s}  masks")
        for label, (seconds, report, out) in results.items():
            masks = decoded_masks(out)
            if reference is None:
                reference, same = masks, "reference"
            else:
                same = ("identical" if masks.keys() == reference.keys()
                        and all(np.array_equal(masks[name], reference[name]) for name in masks) else "DIFFERENT")
            print(f"{label:75s} {seconds:8.1f} {60 * report.ok / seconds:10.1f}  {same} "
                  f"({report.ok} ok, {report.failed} failed)")


if __name__ == "__main__":
    main()
