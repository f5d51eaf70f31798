"""Whole archives: segment every scan under folders, in this process or on a Dask cluster.

``python -m mriseg predict DIR ... --out OUT`` comes here. What happens, step by step:

1. :func:`find_cases` walks the inputs. Each NIfTI, raster or zip file is one case; the DICOM files of a folder
   (``.dcm``/``.dicom``/``.ima``, or any file whose content starts with the DICOM preamble and ``DICM``) are sorted
   into series by SeriesInstanceUID, each series one case. Other files are recorded as skipped, not failed.
2. Cases whose mask already exists and whose row in ``OUT/summary.csv`` says ``ok`` are not redone (unless
   ``overwrite``): a run cut short is finished by running the same command again.
3. :func:`segment_case`, a pure function of the file bytes, segments each case: in this process, or as Dask tasks on
   the workers of a cluster (``scheduler``) or of a :class:`~distributed.LocalCluster` started here (``workers``).
4. As each result comes back (in completion order), its mask is written under OUT at the place of its input in the
   input tree, and its row is appended to ``summary.csv``; the file is rewritten in case order at the end.

Where the work happens on Dask, and why: this process (the client) reads every input and sends its bytes to the
workers, and the workers send the mask bytes and the row back; only the client writes OUT. So workers need mriseg
installed but no access to the archive or to OUT (no shared filesystem: a Kubernetes pod or a cloud VM will do), the
weights travel to each worker once (a worker plugin, checked by sha256 before loading), and ``summary.csv`` has a
single writer, so resuming works exactly as in one process. The price: every byte passes through the client's
network link twice. MRI cases are a few MB, which a cluster's network carries far faster than CPUs segment them.

Only a run with a folder among its inputs writes ``summary.csv`` and resumes; a run on files alone behaves as
``predict`` always has (masks next to each other in OUT, always redone).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from distributed import WorkerPlugin

from mriseg.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from mriseg.data.io import Volume
    from mriseg.inference import Segmenter

SUMMARY_NAME = "summary.csv"
SUMMARY_COLUMNS = ("input", "series_uid", "mask", "slices", "tumour_voxels", "volume_ml", "seconds", "status",
                   "message", "warnings")
OK, FAILED, SKIPPED = "ok", "failed", "skipped"
PNG_SUFFIX, NIFTI_SUFFIX, SEG_SUFFIX = "_mask.png", "_mask.nii.gz", "_seg.dcm"
# Tasks handed to the cluster ahead of the results, per worker thread: enough that no worker waits for the client
# to read the next file, few enough that a huge archive is not read into memory (and sent) at once.
AHEAD_PER_THREAD = 2
MIN_AHEAD = 4  # also while an adaptive cluster (SLURM jobs still queued) has no worker yet
SERIES_DESCRIPTION_CHARS = 40


@dataclass(frozen=True)
class BatchCase:
    """One scan to segment (or a file recorded as skipped), found by :func:`find_cases`.

    Attributes:
        input: the summary's input: the path as given, joined with its place under a folder argument; for a DICOM
            series, its folder.
        key: where the mask goes, relative to OUT, before ``_mask.png`` or ``_mask.nii.gz``.
        label: what messages and printed lines call the case (a plain file argument: its name, as ``predict`` has
            always printed it).
        files: the files to read.
        dicom: read ``files`` as the DICOM files of one series (:func:`mriseg.data.io.read_dicom_files`).
        series_uid: the DICOM SeriesInstanceUID ("" for other files).
        problem: why the case fails before it is read (a missing file, a mask path taken by another case).
        skipped: why the file is no case at all (not a scan file, a DICOM object without an image).
    """

    input: str
    key: str
    label: str
    files: tuple[str, ...] = ()
    dicom: bool = False
    series_uid: str = ""
    problem: str | None = None
    skipped: str | None = None


@dataclass
class CaseResult:
    """What :func:`segment_case` returns: the mask file's bytes (and a DICOM scan's DICOM SEG) and the numbers of the
    summary row."""

    status: str
    message: str = ""
    mask: bytes | None = None
    mask_suffix: str = ""
    seg: bytes | None = None
    slices: int | None = None
    tumour_voxels: int | None = None
    volume_ml: float | None = None
    seconds: float = 0.0
    warnings: tuple[str, ...] = ()
    size_text: str = ""


@dataclass
class BatchReport:
    """Counts of a :func:`run_batch` (``resumed``: done by an earlier run, not redone)."""

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    resumed: int = 0
    summary: Path | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def cases(self) -> int:
        return self.ok + self.failed + self.resumed


# ---------------------------------------------------------------------------------------------------------------
# Finding the cases


def mask_stem(filename: str) -> str:
    """A scan's file name without its extension, the start of its mask's name.

    Only a known extension is taken off, so names with dots in them (UIDs, versions) keep them apart.

    Example:
        >>> mask_stem("sub-01_FLAIR.nii.gz"), mask_stem("1.2.840.113619.2.1.dcm"), mask_stem("IM.0001")
        ('sub-01_FLAIR', '1.2.840.113619.2.1', 'IM.0001')
    """
    from mriseg.data.io import NIFTI_EXTENSIONS, SUPPORTED_EXTENSIONS

    lower = filename.lower()
    for extension in sorted(NIFTI_EXTENSIONS + SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(extension) and len(filename) > len(extension):
            return filename[: -len(extension)]
    return filename


def series_label(number: object, description: object, uid: str) -> str:
    """The file-name-safe name of a DICOM series: its number and description, else its UID.

    Example:
        >>> series_label(3, "AX T2 FLAIR (fs)", "1.2.3")
        'series3_AX-T2-FLAIR-fs'
        >>> series_label(None, "", "1.2.3"), series_label(None, None, "")
        ('series_1.2.3', 'series')
    """
    parts = []
    if number not in (None, ""):
        parts.append(f"series{number}")
    text = re.sub(r"[^A-Za-z0-9]+", "-", str(description or "")).strip("-")[:SERIES_DESCRIPTION_CHARS]
    if text:
        parts.append(text if parts else f"series_{text}")
    if not parts:
        return f"series_{uid}" if uid else "series"
    return "_".join(parts)


def _kind(path: Path) -> str | None:
    """``raster``, ``nifti``, ``zip`` or ``dicom`` (by extension or content), None for anything else."""
    from mriseg.data.dicom import looks_like_dicom
    from mriseg.data.io import file_kind

    try:
        return file_kind(path.name)
    except InputError:
        pass
    try:
        with open(path, "rb") as handle:
            return "dicom" if looks_like_dicom(handle.read(132)) else None
    except OSError:
        return None


def _folder_cases(root: Path, given: str, exclude: str | Path | None = None) -> list[BatchCase]:
    """The cases under one folder argument, walked in sorted order; hidden files and folders, and ``exclude``, are
    left out."""
    cases = []
    excluded = Path(exclude).resolve() if exclude is not None else None
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(name for name in dirs if not name.startswith(".")
                         and (Path(folder) / name).resolve() != excluded)
        relative = Path(folder).relative_to(root)
        dicom_files = []
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            shown = str(Path(given) / relative / name)
            kind = _kind(path)
            if kind is None:
                cases.append(BatchCase(shown, (relative / name).as_posix(), shown,
                                       skipped=f"not a scan file mriseg reads ({path.suffix or 'no extension'})"))
            elif kind == "dicom":
                dicom_files.append(path)
            else:
                cases.append(BatchCase(shown, (relative / mask_stem(name)).as_posix(), shown, files=(str(path),)))
        cases.extend(_series_cases(dicom_files, relative, Path(given) / relative))
    return cases


def _series_cases(paths: list[Path], relative: Path, shown_folder: Path) -> list[BatchCase]:
    """The DICOM files of one folder as one case per series (SeriesInstanceUID); a multi-frame file is its own."""
    from mriseg.data.dicom import frame_count, read_header

    groups: dict[tuple[str, str], list[tuple[Path, object]]] = {}
    cases = []
    for path in paths:
        shown = str(shown_folder / path.name)
        try:
            header = read_header(path)
        except InputError:
            # Unreadable: a case of its own, so the reader's message lands in its row.
            cases.append(BatchCase(shown, (relative / mask_stem(path.name)).as_posix(), shown, files=(str(path),),
                                   dicom=True))
            continue
        if "PixelData" not in header:
            cases.append(BatchCase(shown, (relative / path.name).as_posix(), shown,
                                   skipped="DICOM file without an image (a DICOMDIR, report or other object)"))
            continue
        uid = str(header.get("SeriesInstanceUID", "") or "")
        # A multi-frame file (enhanced MR) holds a whole scan, and may share its UID with other files.
        groups.setdefault((uid, path.name if frame_count(header) > 1 else ""), []).append((path, header))

    labels = {group: series_label(members[0][1].get("SeriesNumber"), members[0][1].get("SeriesDescription"), group[0])
              for group, members in groups.items()}
    for group, members in groups.items():
        uid, files = group[0], tuple(str(path) for path, _ in members)
        if len(members) == 1:  # one file is named as that file would be on its own
            name = members[0][0].name
            shown = str(shown_folder / name)
            cases.append(BatchCase(shown, (relative / mask_stem(name)).as_posix(), shown, files=files, dicom=True,
                                   series_uid=uid))
            continue
        label = labels[group]
        if list(labels.values()).count(label) > 1:
            label = f"{label}_{uid}"  # two series numbered and described alike in one folder
        cases.append(BatchCase(str(shown_folder), (relative / label).as_posix(),
                               f"{shown_folder} ({label}, {len(files)} files)", files=files, dicom=True,
                               series_uid=uid))
    return cases


def _file_case(path: Path, given: str) -> BatchCase:
    """A file named on the command line: always a case, whatever its type (reading it says what is wrong), read by
    :func:`mriseg.data.io.read_volume` as ``predict`` always has."""
    key = mask_stem(path.name)
    if not path.is_file():
        return BatchCase(given, key, path.name, problem=f"{path}: no such file")
    return BatchCase(given, key, path.name, files=(str(path),))


def find_cases(inputs: Sequence[str | Path], *, exclude: str | Path | None = None) -> list[BatchCase]:
    """Every case under ``inputs`` (files and folders), in a stable order.

    A file named directly is always a case and its mask goes to OUT's top; a folder's cases keep their place
    below it. Two cases whose masks would have one name: the later one fails, naming the earlier. ``exclude`` (the
    output folder) is not walked: an OUT inside the archive would otherwise have its masks segmented next time.
    """
    cases: list[BatchCase] = []
    for given in inputs:
        path = Path(given)
        cases.extend(_folder_cases(path, str(given), exclude) if path.is_dir() else [_file_case(path, str(given))])
    claimed: dict[str, int] = {}
    for index, case in enumerate(cases):
        if case.skipped or case.problem:
            continue
        first = claimed.setdefault(case.key.casefold(), index)  # casefold: macOS and Windows disks
        if first != index:
            cases[index] = BatchCase(case.input, case.key, case.label, series_uid=case.series_uid,
                                     problem=f"{case.label}: its mask would overwrite the one of {cases[first].label} "
                                             f"({case.key}_mask.*); rename one, or segment them into separate folders")
    return cases


# ---------------------------------------------------------------------------------------------------------------
# The work on one case (runs in this process or on a Dask worker)

# Loaded segmenters, one per weights folder, sha256, device and precision, so each process (a Dask worker, or this
# one) loads the model once however many cases it segments.
_SEGMENTERS: dict[tuple[str, str, str, str], Segmenter] = {}
# (weights folder as the client names it, sha256) -> the copy a WeightsPlugin wrote on this worker.
_SHIPPED: dict[tuple[str, str], str] = {}
_LOAD_LOCK = threading.Lock()


def cached_segmenter(weights: str | Path, *, sha256: str | None = None, device: str = "auto",
                     precision: str = "auto") -> Segmenter:
    """The :class:`~mriseg.inference.Segmenter` of a weights folder, loaded once per process.

    On a Dask worker the folder is the client's; the model is read from the copy :class:`WeightsPlugin` put on
    the worker when there is one. ``sha256`` (when given) must be what the folder's config.json records, and
    :func:`~mriseg.weights.bundle.load_segmenter` checks the safetensors file against it: a worker never segments with
    other weights than the client chose.
    """
    from mriseg.weights.bundle import load_segmenter, read_config

    key = (str(weights), sha256 or "", device, precision)
    with _LOAD_LOCK:  # a worker with several threads: one loads, the others wait for it
        if key not in _SEGMENTERS:
            folder = local_weights(weights, sha256)
            recorded = read_config(folder).get("weights_sha256")
            if sha256 and recorded != sha256:
                raise InputError(f"{folder}: its weights (sha256 {recorded}) are not the ones asked for ({sha256})")
            _SEGMENTERS[key] = load_segmenter(folder, device=device, precision=precision)
        return _SEGMENTERS[key]


def local_weights(weights: str | Path, sha256: str | None = None) -> str:
    """The weights folder to read here: the copy :class:`WeightsPlugin` put on this worker, else ``weights``."""
    folder = _SHIPPED.get((str(weights), sha256 or ""), str(weights))
    if not Path(folder, "config.json").exists():  # a worker's copy gone with its scratch space
        folder = str(weights)
    return folder


def size_text(size: dict, volume: Volume) -> str:
    """Tumour size in words: mm² for a slice; for a stack the largest slice's mm² and the volume in mL (an area
    summed over slices measures nothing)."""
    text = f"tumour {size['pixels']} px"
    if volume.n_slices == 1:
        return text if volume.pixel_area_mm2 is None else f"{text}, {size['pixels'] * volume.pixel_area_mm2:.1f} mm²"
    text += f" on {sum(n > 0 for n in size['slice_pixels'])} of {volume.n_slices} slices"
    if size["largest_slice"] is not None and volume.pixel_area_mm2 is not None:
        largest = size["largest_slice"]
        text += f", largest {size['slice_pixels'][largest] * volume.pixel_area_mm2:.1f} mm² on slice {largest + 1}"
    if size["volume_ml"] is not None:
        text += f", volume {size['volume_ml']:.2f} mL"
    return text


def segment_case(data: bytes | list[tuple[str, bytes]], name: str, *, weights: str | Path,
                 threshold: float | None = None, tta: bool = False, sha256: str | None = None,
                 device: str = "auto", precision: str = "auto") -> CaseResult:
    """Segment one case from its bytes: a pure function of its arguments, so it runs anywhere mriseg is installed.

    Args:
        data: a file's content, or (file name, content) of each DICOM file of one series.
        name: what messages call the case; for ``bytes``, its extension chooses the reader.
        weights: the weights folder (see :func:`cached_segmenter`).
        threshold: probability threshold; None: the one stored with the weights.
        tta: average with the mirrored image.
        sha256: the weights' sha256, checked before use.
        device, precision: as :func:`mriseg.weights.bundle.load_segmenter` takes them.

    Returns:
        A :class:`CaseResult`: ``ok`` with the mask file (PNG for a raster slice, NIfTI in scanner space for the
        rest, a NIfTI input's in its own voxel order: :func:`mriseg.data.io.mask_to_nifti`), or ``failed`` with
        the message. Nothing raises: one bad file must not end a run over an archive.
    """
    from mriseg.data.input_check import check_input
    from mriseg.data.io import mask_to_nifti, mask_to_png, read_dicom_files, read_volume
    from mriseg.metrics import tumour_size
    from mriseg.postprocessing import binarize

    start = time.perf_counter()
    try:
        segmenter = cached_segmenter(weights, sha256=sha256, device=device, precision=precision)
        start = time.perf_counter()  # a worker's first case loads the model: not this case's time
        volume = read_volume(data, name) if isinstance(data, bytes) else read_dicom_files(data, name)
        warnings = tuple(check_input(volume))  # segmented all the same: a warning is no failure
        mask = binarize(segmenter.predict(volume.pixels, tta=tta).mean, segmenter.postprocessing, threshold)
        # A scan placed in scanner space (NIfTI, DICOM) gets its mask back in that space, even a single slice.
        if volume.n_slices == 1 and volume.affine is None:
            encoded, suffix = mask_to_png(mask[0]), PNG_SUFFIX
        else:
            encoded, suffix = mask_to_nifti(mask, volume), NIFTI_SUFFIX
        seg, seg_problem = dicom_seg_of(mask, volume, local_weights(weights, sha256))
        size = tumour_size(mask, volume)
    except InputError as error:
        return CaseResult(FAILED, str(error), seconds=time.perf_counter() - start)
    except Exception as error:  # an archive holds files nobody foresaw: record it, go on with the next case
        return CaseResult(FAILED, f"{name}: unexpected {type(error).__name__}: {error}",
                          seconds=time.perf_counter() - start)
    return CaseResult(OK, mask=encoded, mask_suffix=suffix, seg=seg, slices=volume.n_slices,
                      tumour_voxels=size["pixels"], volume_ml=size["volume_ml"], seconds=time.perf_counter() - start,
                      warnings=warnings + seg_problem, size_text=size_text(size, volume))


def dicom_seg_of(mask: np.ndarray, volume: Volume, weights: str) -> tuple[bytes | None, tuple[str, ...]]:
    """A DICOM scan's mask as a DICOM SEG (None for other scans), or None and why it could not be made."""
    from mriseg.data.io import mask_to_dicom_seg
    from mriseg.weights.bundle import model_version, read_config

    if volume.dicom_headers is None:
        return None, ()
    try:
        return mask_to_dicom_seg(mask, volume, model_version=model_version(read_config(weights))), ()
    except InputError as error:  # the NIfTI mask is written all the same
        return None, (str(error),)


def read_case(case: BatchCase) -> bytes | list[tuple[str, bytes]]:
    """The bytes :func:`segment_case` takes for a case (read here, on the client). Raises OSError, also for files
    larger together than any volume mriseg reads, before a byte of them is held in memory."""
    from mriseg.data.io import MAX_UNCOMPRESSED_BYTES

    size = sum(Path(path).stat().st_size for path in case.files)
    if size > MAX_UNCOMPRESSED_BYTES:
        raise OSError(f"{size / 2**20:,.0f} MiB is more than the {MAX_UNCOMPRESSED_BYTES >> 20} MiB mriseg reads "
                      "for one scan")
    if case.dicom:
        return [(Path(path).name, Path(path).read_bytes()) for path in case.files]
    return Path(case.files[0]).read_bytes()


# ---------------------------------------------------------------------------------------------------------------
# Runners: each yields (case, result) as results come


@dataclass(frozen=True)
class ModelSettings:
    """How every case is segmented: the keyword arguments of :func:`segment_case` after ``name``."""

    weights: str
    sha256: str | None = None
    threshold: float | None = None
    tta: bool = False
    device: str = "auto"
    precision: str = "auto"

    def kwargs(self) -> dict:
        return {"weights": self.weights, "sha256": self.sha256, "threshold": self.threshold, "tta": self.tta,
                "device": self.device, "precision": self.precision}


def _unreadable(case: BatchCase, error: OSError) -> CaseResult:
    return CaseResult(FAILED, f"{case.label}: cannot be read ({error.strerror or error})")


def run_local(cases: Iterable[BatchCase], settings: ModelSettings) -> Iterator[tuple[BatchCase, CaseResult]]:
    """Segment the cases one after the other in this process."""
    for case in cases:
        try:
            data = read_case(case)
        except OSError as error:
            yield case, _unreadable(case, error)
            continue
        yield case, segment_case(data, case.label, **settings.kwargs())


class WeightsPlugin(WorkerPlugin):
    """Puts a copy of the weights folder on every worker, present and future (an adaptive cluster adds some).

    The client reads config.json and model.safetensors once; each worker writes them to its local directory and
    :func:`cached_segmenter` loads from there (sha256-checked, never unpickled) at the first case.
    """

    idempotent = True  # registering it again (a second run on the same cluster) changes nothing

    def __init__(self, folder: str, sha256: str, files: dict[str, bytes]) -> None:
        self.folder, self.sha256, self.files = folder, sha256, files
        self.name = f"mriseg-weights-{hashlib.sha256(files.get('model.safetensors', b'')).hexdigest()[:16]}"

    def setup(self, worker) -> None:
        local = Path(worker.local_directory) / self.name
        local.mkdir(parents=True, exist_ok=True)
        for filename, content in self.files.items():
            (local / filename).write_bytes(content)
        _SHIPPED[(self.folder, self.sha256)] = str(local)

    def teardown(self, worker) -> None:
        # A worker in the client's own process (processes=False) must not leave the client pointing at a copy
        # that goes when the worker's scratch space does.
        _SHIPPED.pop((self.folder, self.sha256), None)


def weights_plugin(settings: ModelSettings) -> WeightsPlugin:
    """The plugin for the settings' weights, checked against their sha256 here, before anything is sent."""
    from mriseg.weights.bundle import CONFIG_NAME, WEIGHTS_NAME, read_config

    folder = Path(settings.weights)
    files = {}
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            files[name] = (folder / name).read_bytes()
        except FileNotFoundError as error:
            raise InputError(f"{folder / name} is missing: a weights folder needs config.json and "
                             "model.safetensors") from error
    recorded = read_config(folder).get("weights_sha256") or ""
    if settings.sha256 and settings.sha256 != recorded:
        raise InputError(f"{folder}: its weights (sha256 {recorded}) are not the ones asked for ({settings.sha256})")
    if recorded and hashlib.sha256(files[WEIGHTS_NAME]).hexdigest() != recorded:
        raise InputError(f"{folder / WEIGHTS_NAME} does not match the sha256 recorded in config.json: the file is "
                         "corrupt or was replaced. Download the weights again")
    # Keyed by the folder as the client names it: that is the name the tasks carry.
    return WeightsPlugin(settings.weights, recorded, files)


def run_dask(cases: Sequence[BatchCase], settings: ModelSettings, client) -> Iterator[tuple[BatchCase, CaseResult]]:
    """Segment the cases as tasks on the workers of a ``distributed.Client``, yielding results as they complete.

    Inputs are read here and scattered to the workers (no shared filesystem needed); only a few tasks per worker
    thread are out at a time, so memory stays bounded however large the archive.
    """
    from distributed import as_completed

    plugin = weights_plugin(settings)
    client.register_plugin(plugin)
    settings = replace(settings, sha256=plugin.sha256 or None)
    waiting = iter(cases)
    running = as_completed()
    case_of: dict[str, BatchCase] = {}

    def ahead() -> int:
        return max(MIN_AHEAD, AHEAD_PER_THREAD * sum(client.nthreads().values()))

    def submit_more() -> Iterator[tuple[BatchCase, CaseResult]]:
        while running.count() < ahead():
            case = next(waiting, None)
            if case is None:
                return
            try:
                data = read_case(case)
            except OSError as error:
                yield case, _unreadable(case, error)
                continue
            # Scattered rather than put into the task: a volume of tens of MB in the task graph slows the scheduler.
            [payload] = client.scatter([data], hash=False)
            future = client.submit(segment_case, payload, case.label, pure=False, **settings.kwargs())
            case_of[future.key] = case
            running.add(future)

    yield from submit_more()
    for future in running:
        case = case_of.pop(future.key)
        try:
            result = future.result()
        except Exception as error:  # the worker died (out of memory, say) on this case, and on its retries
            result = CaseResult(FAILED, f"{case.label}: the Dask task failed ({type(error).__name__}: {error})")
        future.release()
        yield case, result
        yield from submit_more()


# ---------------------------------------------------------------------------------------------------------------
# The summary and resuming


def read_summary(path: Path) -> list[dict]:
    """The rows of an existing ``summary.csv`` ([] when there is none).

    Raises:
        ValueError: when the file is not a mriseg summary (a file of the user's own is never overwritten).
    """
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not set(SUMMARY_COLUMNS) <= set(reader.fieldnames or ()):
            raise ValueError(f"{path} exists but is not a mriseg summary (no columns {', '.join(SUMMARY_COLUMNS)}); "
                             "choose another --out")
        return list(reader)


def _row_key(row: dict) -> tuple[str, str]:
    return row["input"], row["series_uid"]


def _case_key(case: BatchCase) -> tuple[str, str]:
    return case.input, case.series_uid


def is_done(row: dict | None, out: Path) -> bool:
    """Whether a summary row says its case was segmented and its mask is still there."""
    return bool(row and row["status"] == OK and row["mask"] and (out / row["mask"]).is_file())


def result_row(case: BatchCase, result: CaseResult) -> dict:
    """A summary row (strings, as :mod:`csv` writes them)."""
    return {
        "input": case.input,
        "series_uid": case.series_uid,
        "mask": f"{case.key}{result.mask_suffix}" if result.status == OK else "",
        "slices": "" if result.slices is None else str(result.slices),
        "tumour_voxels": "" if result.tumour_voxels is None else str(result.tumour_voxels),
        "volume_ml": "" if result.volume_ml is None else f"{result.volume_ml:.3f}",
        "seconds": f"{result.seconds:.2f}" if result.status != SKIPPED else "",
        "status": result.status,
        "message": result.message,
        "warnings": " | ".join(result.warnings),
    }


def _write_rows(path: Path, rows: Iterable[dict]) -> None:
    """Write the whole summary through a temporary file: a run stopped mid-write never leaves half a summary."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)


def _write_atomically(path: Path, content: bytes) -> None:
    """A mask file appears whole or not at all, so a mask on disk always belongs to a finished case."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------------------------
# The whole run


def _print(line: str, file=None) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=file or sys.stdout)  # above the progress bar, not through it


def run_batch(inputs: Sequence[str | Path], out: str | Path, *, settings: ModelSettings, overwrite: bool = False,
              client=None, progress: bool = True,
              runner: Callable[[Sequence[BatchCase], ModelSettings], Iterable[tuple[BatchCase, CaseResult]]]
              | None = None) -> BatchReport:
    """Segment every case under ``inputs`` into OUT; see the module docstring for the whole story.

    Args:
        inputs: files and folders.
        out: the output folder (created).
        settings: the model and how to apply it.
        overwrite: redo cases already done by an earlier run into the same OUT.
        client: a ``distributed.Client``: the cases run on its workers (:func:`run_dask`); None: in this process.
        progress: show a progress bar with an ETA over the cases.
        runner: replaces the choice above (for callers with a runner of their own).

    Returns:
        The counts, with the failure messages; lines per case are printed as they finish.
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cases = find_cases(inputs, exclude=out)
    # The summary and resuming belong to archive runs; files alone keep predict's behaviour of old.
    archive = any(Path(given).is_dir() for given in inputs)
    summary = out / SUMMARY_NAME if archive else None
    previous = {_row_key(row): row for row in read_summary(summary)} if summary else {}

    report = BatchReport(summary=summary)
    rows: dict[tuple[str, str], dict] = {}
    to_run = []
    for case in cases:
        earlier = previous.get(_case_key(case))
        if case.skipped:
            rows[_case_key(case)] = result_row(case, CaseResult(SKIPPED, case.skipped))
            report.skipped += 1
        elif case.problem:
            rows[_case_key(case)] = result_row(case, CaseResult(FAILED, case.problem))
            report.failed += 1
            report.failures.append(case.problem)
            _print(f"error: {case.problem}", sys.stderr)
        elif summary and not overwrite and is_done(earlier, out):
            rows[_case_key(case)] = earlier
            report.resumed += 1
        else:
            to_run.append(case)
    # Rows of cases outside this run (other folders segmented into the same OUT) are kept as they were.
    this_run = {_case_key(case) for case in cases}
    others = [row for key, row in previous.items() if key not in this_run]
    if report.resumed:
        _print(f"{report.resumed} case(s) already done in {out} (recorded ok in {SUMMARY_NAME}, mask present): "
               "skipped; --overwrite redoes them", sys.stderr)
    if summary:
        _write_rows(summary, others + list(rows.values()))

    if runner is None:
        runner = run_local if client is None else (lambda jobs, model: run_dask(jobs, model, client))
    # In a log file (a cluster job) the bar is a new line each update: every 10 s there, not 10 times a second.
    bar = tqdm(total=len(to_run), unit="case", desc="segmenting", file=sys.stderr, disable=not progress or not to_run,
               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 10)
    try:
        with (open(summary, "a", newline="", encoding="utf-8") if summary else io.StringIO()) as appended:
            writer = csv.DictWriter(appended, SUMMARY_COLUMNS, extrasaction="ignore")
            for case, result in runner(to_run, settings):
                for warning in result.warnings:
                    _print(f"warning: {case.label}: {warning}", sys.stderr)
                if result.status == OK:
                    target = out / f"{case.key}{result.mask_suffix}"
                    _write_atomically(target, result.mask)
                    written = str(target)
                    if result.seg is not None:
                        _write_atomically(out / f"{case.key}{SEG_SUFFIX}", result.seg)
                        written += f" and {out / f'{case.key}{SEG_SUFFIX}'}"
                    report.ok += 1
                    _print(f"{case.label}: {result.size_text} -> {written}")
                else:
                    report.failed += 1
                    report.failures.append(result.message)
                    _print(f"error: {result.message}", sys.stderr)
                row = result_row(case, result)
                rows[_case_key(case)] = row
                # Appended (and flushed) at once: a run stopped here resumes from this case on.
                writer.writerow(row)
                appended.flush()
                bar.update()
    finally:
        bar.close()
    if summary:
        order = [_case_key(case) for case in cases]
        _write_rows(summary, others + [rows[key] for key in order if key in rows])
    return report


@contextlib.contextmanager
def dask_client(*, scheduler: str | None = None, workers: int = 0) -> Iterator:
    """A ``distributed.Client`` of the cluster at ``scheduler``, or of a :class:`~distributed.LocalCluster` of
    ``workers`` processes started (and stopped) here.

    Each local worker is one process with one thread: PyTorch runs single-threaded in it (Dask sets
    OMP_NUM_THREADS=1 for its worker processes), so N workers use N cores without fighting over them.
    """
    import logging

    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as error:  # TimeoutError included
            raise ValueError(f"no Dask scheduler answers at {scheduler} ({error})") from error
        with client:
            yield client
        return
    if workers < 1:
        raise ValueError("a local Dask cluster needs at least one worker")
    # No dashboard: it needs bokeh, and a fixed port would clash between two runs on one machine.
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client
