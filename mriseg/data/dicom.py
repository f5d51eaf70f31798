"""DICOM to a scanner-space image, so a DICOM scan is reoriented and written back like a NIfTI file of it.

Classic files (one image, or one slice per file) go through SimpleITK (GDCM): it decodes the pixels with the
rescale slope and intercept and MONOCHROME1 applied, orders a series along its slice normal from
ImagePositionPatient, and takes the axes from ImageOrientationPatient. An enhanced (multi-frame) MR file describes
each frame in functional groups, which GDCM neither orders by nor rescales per frame, so its frames are ordered here
by PlanePositionSequence along the normal of PlaneOrientationSequence, with PixelMeasuresSequence's spacing.

:func:`scanner_image` gives a nibabel image in RAS+ world coordinates, as a NIfTI file of the scan would hold it;
every problem raises :class:`InputError`. Before anything is decoded or written, :func:`check_pixel_data` holds the
pixel data to the image the header declares.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import stat
import tempfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from mriseg.data.io import quiet_decoders
from mriseg.errors import InputError

# Frames closer than this along the normal (mm) are at one position: several echoes, time points or stacks.
SAME_POSITION_MM = 1e-3

# Slice steps of one series may differ by this share of the usual step (positions are rounded in headers).
UNEVEN_STEP = 0.1

# ITK's world axes are DICOM's patient axes (x to the patient's left, y posterior); NIfTI's point the other way.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# Header values larger than this are left in the file until asked for: a parsed header never copies the pixels.
DEFER_BYTES = 1024
UNDEFINED_LENGTH = 0xFFFFFFFF  # how encapsulated (compressed) pixel data, a sequence of fragments, are stored

# Uncompressed pixel data may run past the image by this share of it plus PIXEL_DATA_SLACK bytes (an odd image is
# padded to even length, some writers round up further); more is not part of the image, yet would be copied to disk.
EXCESS_PIXEL_SHARE = 0.01
PIXEL_DATA_SLACK = 1024
# Compressed frames can outgrow their raw size on noise, but not by half again.
MAX_COMPRESSION_GROWTH = 1.5
# Everything in a file besides its pixels: an enhanced MR file of 1000 frames describes each in a few kB.
MAX_HEADER_BYTES = 32 << 20


# A DICOM file (Part 10) opens with a 128-byte preamble and the magic "DICM": how a file without extension is known.
PREAMBLE = 128
MAGIC = b"DICM"


def looks_like_dicom(head: bytes) -> bool:
    """Whether ``head`` (a file's content, or at least its first 132 bytes) starts as a DICOM file does.

    Example:
        >>> looks_like_dicom(bytes(128) + b"DICM" + bytes(10)), looks_like_dicom(b"\\x89PNG" + bytes(200))
        (True, False)
    """
    return head[PREAMBLE : PREAMBLE + len(MAGIC)] == MAGIC


def read_header(path: str | Path) -> Dataset:
    """The header of a DICOM file on disk, its pixel data left unread (for sorting files into series).

    Raises:
        InputError: when it is not a DICOM file or its header is damaged.
    """
    try:
        # Values over 1 KiB (the pixels) are skipped over, not read; "PixelData" in the result still answers.
        with quiet_decoders():
            return pydicom.dcmread(path, defer_size=DEFER_BYTES)
    except InvalidDicomError as error:
        raise InputError(f"{path}: not a DICOM file (no DICOM header found)") from error
    except Exception as error:  # pydicom raises many types for a damaged header
        raise InputError(f"{path}: the DICOM file is corrupt or truncated ({error})") from error


def parse(data: bytes, filename: str) -> Dataset:
    """The DICOM data set in ``data``; uncompressed pixel data stay unread in ``data`` until asked for."""
    _check_deflated_size(data, filename)
    try:
        with quiet_decoders():
            return pydicom.dcmread(io.BytesIO(data), defer_size=DEFER_BYTES)
    except InvalidDicomError as error:
        raise InputError(f"{filename}: not a DICOM file (no DICOM header found)") from error
    except Exception as error:  # pydicom raises many types for a damaged header
        raise InputError(f"{filename}: the DICOM file is corrupt or truncated ({error})") from error


# A deflated file names its transfer syntax in the file meta group, which ends within this many bytes.
META_GROUP_BYTES = 2048
# Where the file meta group's length (the value of its first element, explicit VR UL) lies.
META_LENGTH_AT = PREAMBLE + len(MAGIC) + 8


def _check_deflated_size(data: bytes, filename: str) -> None:
    """pydicom inflates a deflated data set whole, however far it goes: measure it first, a piece at a time."""
    from mriseg.data.io import MAX_UNCOMPRESSED_BYTES, UNPACK_CHUNK

    if not looks_like_dicom(data) or DeflatedExplicitVRLittleEndian.encode() not in data[:META_GROUP_BYTES]:
        return
    start = META_LENGTH_AT + 4 + int.from_bytes(data[META_LENGTH_AT : META_LENGTH_AT + 4], "little")
    inflater, size, rest = zlib.decompressobj(-zlib.MAX_WBITS), 0, data[start:]
    try:
        while not inflater.eof and size <= MAX_UNCOMPRESSED_BYTES:
            piece = inflater.decompress(rest, UNPACK_CHUNK)
            rest = inflater.unconsumed_tail
            if not piece and not rest:
                break  # the data end before the deflate stream does: pydicom's own read reports it
            size += len(piece)
    except zlib.error as error:
        raise InputError(f"{filename}: the deflated DICOM data are corrupt ({error})") from error
    if size > MAX_UNCOMPRESSED_BYTES:
        raise InputError(f"{filename}: the deflated DICOM data unpack to more than {MAX_UNCOMPRESSED_BYTES >> 20} "
                         "MiB, the most mriseg reads; export the image uncompressed")


def check_pixel_data(dataset: Dataset, size: int, filename: str) -> None:
    """Refuse a file (of ``size`` bytes, parsed by :func:`parse`) whose pixel data cannot be the image its header
    declares, before any pixel is decoded or written to disk.

    Uncompressed pixel data must hold rows x columns x frames x samples x bits: decoders fill missing bytes with
    zeros (999 frames from 100 bytes), and bytes past the image would be copied to disk for nothing. Compressed
    (encapsulated) data need a fragment for every frame, and no more bytes than the raw image and some.
    """
    expected = _expected_bytes(dataset, filename)
    element = dataset.get_item("PixelData", keep_deferred=True)
    encapsulated = _transfer_syntax(dataset, filename).is_encapsulated
    if encapsulated != (element.length == UNDEFINED_LENGTH):
        raise InputError(f"{filename}: the pixel data are {'not ' if encapsulated else ''}stored as fragments, "
                         "unlike what the file's transfer syntax says; the file is damaged")
    if encapsulated:  # fragments are read to be counted: compressed, they are no larger than the file
        length = _fragments_length(dataset.get_item("PixelData").value, frame_count(dataset), filename)
    else:
        length = element.length
        if length < expected:
            raise InputError(f"{filename}: the pixel data hold {length:,} bytes, but the header declares "
                             f"{_declared(dataset)} that need {expected:,}: the file is truncated. Export it again")
    allowed = MAX_COMPRESSION_GROWTH * expected if encapsulated else (1 + EXCESS_PIXEL_SHARE) * expected
    if length > allowed + PIXEL_DATA_SLACK:
        raise InputError(f"{filename}: the pixel data hold {length:,} bytes, far more than the {_declared(dataset)} "
                         f"the header declares ({expected:,} bytes); the file is damaged or hides other data")
    if size - length > MAX_HEADER_BYTES:
        raise InputError(f"{filename}: the file holds {(size - length) >> 20} MiB besides its pixel data (at most "
                         f"{MAX_HEADER_BYTES >> 20} MiB is read); export the image without attachments")


def _expected_bytes(dataset: Dataset, filename: str) -> int:
    """Bytes of uncompressed pixel data the header declares."""
    try:
        bits = int(dataset.BitsAllocated)
        samples = int(dataset.get("SamplesPerPixel", 1))
        pixels = int(dataset.Rows) * int(dataset.Columns) * frame_count(dataset) * samples
    except (AttributeError, TypeError, ValueError) as error:
        raise InputError(f"{filename}: the DICOM header does not say how its pixels are stored (Rows, Columns, "
                         "BitsAllocated); the file is damaged") from error
    if not (0 < bits <= 64 and 0 < samples <= 4):
        raise InputError(f"{filename}: pixels of {bits} bits and {samples} samples are not an image mriseg reads")
    expected = -(-pixels * bits // 8)  # 1-bit (or 12-bit) pixels are packed, the last byte rounded up
    # YBR_FULL_422 stores two chroma samples for every two pixels (DICOM Part 3, C.7.6.3.1.2).
    return expected // 3 * 2 if dataset.get("PhotometricInterpretation") == "YBR_FULL_422" else expected


def _declared(dataset: Dataset) -> str:
    frames = frame_count(dataset)
    return f"{frames:,} frame{'s' if frames > 1 else ''} of {dataset.Rows}x{dataset.Columns}"


def _transfer_syntax(dataset: Dataset, filename: str) -> UID:
    # Without file meta pydicom reads the data set as implicit VR little endian, the DICOM default.
    meta = getattr(dataset, "file_meta", None) or Dataset()
    syntax = UID(meta.get("TransferSyntaxUID", ImplicitVRLittleEndian))
    if not syntax.is_transfer_syntax:
        raise InputError(f"{filename}: unknown DICOM transfer syntax {syntax}; export the image uncompressed")
    return syntax


def _fragments_length(value: bytes, frames: int, filename: str) -> int:
    """Bytes in the fragments of encapsulated pixel data, refused when there are fewer fragments than frames."""
    try:
        # The first item is the basic offset table, not a fragment.
        lengths = [len(fragment) for fragment in generate_fragments(value)][1:]
    except (ValueError, TypeError) as error:
        raise InputError(f"{filename}: the compressed pixel data are damaged ({error})") from error
    if len(lengths) < frames:
        raise InputError(f"{filename}: the compressed pixel data hold {len(lengths)} fragment(s) for {frames:,} "
                         "frames: the file is truncated. Export it again")
    return sum(lengths)


def frame_count(dataset: Dataset) -> int:
    return int(dataset.get("NumberOfFrames", 1) or 1)


def records_pixel_spacing(dataset: Dataset) -> bool:
    """Whether the header gives the pixel size (an enhanced file must, in its functional groups)."""
    return "PixelSpacing" in dataset or "PerFrameFunctionalGroupsSequence" in dataset


def series_shape(datasets: list[Dataset], filename: str) -> tuple[int, int, int]:
    """(images, rows, columns) of the files of one scan, read from their headers before any pixel is decoded.

    Raises:
        InputError: when a file holds no image, or the files are not one series of equal-sized single frames.
    """
    if any("PixelData" not in dataset for dataset in datasets):
        raise InputError(f"{filename}: DICOM file holds no image (no PixelData)")
    if len(datasets) > 1:
        if any(frame_count(dataset) > 1 for dataset in datasets):
            raise InputError(f"{filename}: a multi-frame DICOM file sits among other files; zip one series, or "
                             "give the multi-frame file alone")
        series = {dataset.get("SeriesInstanceUID") for dataset in datasets}
        if len(series) > 1:
            raise InputError(f"{filename}: the files belong to {len(series)} series; zip one series")
    if any("Rows" not in dataset or "Columns" not in dataset for dataset in datasets):
        raise InputError(f"{filename}: the DICOM header gives no image size (Rows, Columns); the file is damaged")
    shapes = {(int(dataset.Rows), int(dataset.Columns)) for dataset in datasets}
    if len(shapes) > 1:
        raise InputError(f"{filename}: the DICOM files differ in size {sorted(shapes)}; zip one series")
    return sum(frame_count(dataset) for dataset in datasets), *shapes.pop()


def scanner_image(files: list[tuple[bytes, Dataset]], filename: str) -> nib.Nifti1Image:
    """The scan in ``files`` (content and parsed header of each, checked by :func:`series_shape`) in RAS+ world.

    Without ImagePositionPatient/ImageOrientationPatient the image keeps its stored layout as if it were axial.
    """
    dataset = files[0][1]
    if "PerFrameFunctionalGroupsSequence" in dataset:
        image = _enhanced_image(dataset, filename)
    else:
        image = _classic_image(files, filename)
    return _to_nifti(image)


def _classic_image(files: list[tuple[bytes, Dataset]], filename: str) -> sitk.Image:
    # SimpleITK reads files, not bytes: the upload goes through a private temporary folder (see temporary_root).
    with tempfile.TemporaryDirectory(prefix=f"{FOLDER_PREFIX}{os.getpid()}-", dir=temporary_root()) as folder:
        paths = [str(Path(folder) / f"{index:05d}.dcm") for index in range(len(files))]
        for path, (data, _) in zip(paths, files, strict=True):
            Path(path).write_bytes(data)
        try:
            if len(paths) == 1:  # read as one file: a multi-frame file read as a series gains a fourth axis
                image = sitk.ReadImage(paths[0])
            else:
                # GDCM orders the files along the slice normal (by InstanceNumber where positions are missing).
                ordered = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder)
                _check_even_steps([files[int(Path(name).stem)][1] for name in ordered], filename)
                image = sitk.ReadImage(ordered)
        except RuntimeError as error:
            raise InputError(f"{filename}: the DICOM pixel data are corrupt, truncated or in an encoding that "
                             "cannot be decoded") from error
    if len(files) == 1:
        # One file gives no neighbouring position to measure the slice step from; the header's own is used.
        dataset = files[0][1]
        step = float(dataset.get("SpacingBetweenSlices") or dataset.get("SliceThickness") or 1.0)
        image.SetSpacing((*image.GetSpacing()[:2], step))
    return image


FOLDER_PREFIX = "dicom-"  # then the process id, so a later start knows whose a folder is


@functools.cache
def temporary_root() -> Path:
    """``<tmp>/mriseg-<uid>``: this user's folder (mode 0700) for DICOM files being read, swept of the folders of
    processes that are gone the first time it is asked for.

    A process killed mid-read (SIGKILL, out of memory) cannot remove its folder, and the files name the patient.
    """
    root = Path(tempfile.gettempdir()) / f"mriseg-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    status = root.lstat()
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid():
        # Another user took the name first (a shared /tmp): a fresh private folder instead of theirs.
        return Path(tempfile.mkdtemp(prefix="mriseg-"))
    root.chmod(0o700)
    sweep_stale_temporary_folders(root)
    return root


def sweep_stale_temporary_folders(root: Path | None = None) -> None:
    """Remove the DICOM folders under ``root`` (default: :func:`temporary_root`) whose process no longer runs."""
    for folder in (root or temporary_root()).glob(f"{FOLDER_PREFIX}*"):
        pid = folder.name.removeprefix(FOLDER_PREFIX).split("-")[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    return True


def _check_even_steps(ordered: list[Dataset], filename: str) -> None:
    """Refuse a series with a gap: ITK spaces the slices evenly, so a mask would be written back off place."""
    if not all("ImagePositionPatient" in dataset and "ImageOrientationPatient" in dataset for dataset in ordered):
        return
    orientation = np.asarray(ordered[0].ImageOrientationPatient, dtype=float)
    positions = np.asarray([dataset.ImagePositionPatient for dataset in ordered], dtype=float)
    steps = np.abs(np.diff(positions @ np.cross(orientation[:3], orientation[3:])))
    if steps.max() - steps.min() > UNEVEN_STEP * np.median(steps):
        raise InputError(f"{filename}: the slices are unevenly spaced ({steps.min():.2f} to {steps.max():.2f} mm "
                         "apart): a slice is missing, or the zip mixes acquisitions; zip one complete series")


def _functional_group(dataset: Dataset, frame: int, keyword: str) -> Dataset | None:
    """A frame's item of a functional group: its own (per-frame) where given, else the shared one."""
    shared = dataset.get("SharedFunctionalGroupsSequence") or [Dataset()]
    for groups in (dataset.PerFrameFunctionalGroupsSequence[frame], shared[0]):
        if groups.get(keyword):
            return groups[keyword].value[0]
    return None


def _frame_values(dataset: Dataset, keyword: str, attribute: str, filename: str) -> np.ndarray:
    """One numeric attribute of a functional group for every frame: a (frames, values) array."""
    values = []
    for frame in range(frame_count(dataset)):
        item = _functional_group(dataset, frame, keyword)
        if item is None or attribute not in item:
            raise InputError(f"{filename}: frame {frame + 1} of the multi-frame DICOM has no {attribute} "
                             f"({keyword}), so its place in the volume is unknown")
        values.append(np.atleast_1d(np.asarray(item[attribute].value, dtype=float)))
    return np.asarray(values)


def _rescale(dataset: Dataset, frame: int) -> tuple[float, float]:
    """(slope, intercept) of a frame; each frame may carry its own, and one without any holds real values."""
    item = _functional_group(dataset, frame, "PixelValueTransformationSequence") or dataset
    return float(item.get("RescaleSlope", 1.0)), float(item.get("RescaleIntercept", 0.0))


def _enhanced_image(dataset: Dataset, filename: str) -> sitk.Image:
    frames = frame_count(dataset)
    if len(dataset.PerFrameFunctionalGroupsSequence) != frames:
        raise InputError(f"{filename}: the multi-frame DICOM describes {len(dataset.PerFrameFunctionalGroupsSequence)}"
                         f" frames but holds {frames}")
    if int(dataset.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"{filename}: the multi-frame DICOM is in colour; mriseg reads grey-scale MR")
    orientations = _frame_values(dataset, "PlaneOrientationSequence", "ImageOrientationPatient", filename)
    spacings = _frame_values(dataset, "PixelMeasuresSequence", "PixelSpacing", filename)
    if not np.allclose(orientations, orientations[0], atol=1e-4) or not np.allclose(spacings, spacings[0]):
        raise InputError(f"{filename}: the frames differ in orientation or pixel spacing (several stacks in one "
                         "file); export one stack")
    row, column = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row, column)
    positions = _frame_values(dataset, "PlanePositionSequence", "ImagePositionPatient", filename)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    steps = np.diff(along[order])
    if len(steps) and steps.min() < SAME_POSITION_MM:
        raise InputError(f"{filename}: several frames lie at one position (echoes, time points or stacks in one "
                         "file); export a single volume")
    if len(steps):
        step = float(np.median(steps))
    else:
        measures = _functional_group(dataset, 0, "PixelMeasuresSequence")
        step = float(measures.get("SpacingBetweenSlices") or measures.get("SliceThickness") or 1.0)

    try:
        stored = dataset.pixel_array.reshape(frames, int(dataset.Rows), int(dataset.Columns))
    except Exception as error:  # pydicom raises many types for missing or undecodable pixel data
        raise InputError(f"{filename}: the DICOM pixel data are corrupt, truncated or in an encoding that cannot "
                         f"be decoded ({error})") from error
    rescale = np.asarray([_rescale(dataset, frame) for frame in range(frames)], dtype=np.float32)
    pixels = stored.astype(np.float32) * rescale[:, 0, None, None] + rescale[:, 1, None, None]

    image = sitk.GetImageFromArray(pixels[order])
    image.SetOrigin(tuple(positions[order[0]]))
    # PixelSpacing is (between rows, between columns); ITK's spacing runs along (columns, rows, frames).
    image.SetSpacing((spacings[0][1], spacings[0][0], step))
    image.SetDirection(tuple(np.column_stack([row, column, normal]).ravel()))
    return image


def _to_nifti(image: sitk.Image) -> nib.Nifti1Image:
    """A SimpleITK image (LPS world) as a nibabel image (RAS+ world), voxels indexed (x, y, z)."""
    pixels = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x) or (z, y, x, colour)
    if image.GetNumberOfComponentsPerPixel() > 1:
        pixels = pixels.mean(axis=-1)
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return nib.Nifti1Image(pixels.transpose(2, 1, 0), LPS_TO_RAS @ lps)
