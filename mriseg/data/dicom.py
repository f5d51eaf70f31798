"""DICOM to a scanner-space image, so a DICOM scan is reoriented and written back like a NIfTI file of it.

Classic files (one image, or one slice per file) go through SimpleITK (GDCM): it decodes the pixels with the
rescale slope and intercept and MONOCHROME1 applied, orders a series along its slice normal from
ImagePositionPatient, and takes the axes from ImageOrientationPatient. An enhanced (multi-frame) MR file describes
each frame in functional groups, which GDCM neither orders by nor rescales per frame, so its frames are ordered here
by PlanePositionSequence along the normal of PlaneOrientationSequence, with PixelMeasuresSequence's spacing.

:func:`scanner_image` gives a nibabel image in RAS+ world coordinates, as a NIfTI file of the scan would hold it;
every problem raises :class:`InputError`.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from mriseg.errors import InputError

# Frames closer than this along the normal (mm) are at one position: several echoes, time points or stacks.
SAME_POSITION_MM = 1e-3

# Slice steps of one series may differ by this share of the usual step (positions are rounded in headers).
UNEVEN_STEP = 0.1

# ITK's world axes are DICOM's patient axes (x to the patient's left, y posterior); NIfTI's point the other way.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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
        return pydicom.dcmread(path, defer_size=1024)
    except InvalidDicomError as error:
        raise InputError(f"{path}: not a DICOM file (no DICOM header found)") from error
    except Exception as error:  # pydicom raises many types for a damaged header
        raise InputError(f"{path}: the DICOM file is corrupt or truncated ({error})") from error


def parse(data: bytes, filename: str) -> Dataset:
    """The DICOM data set in ``data`` (pixels not decoded)."""
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as error:
        raise InputError(f"{filename}: not a DICOM file (no DICOM header found)") from error
    except Exception as error:  # pydicom raises many types for a damaged header
        raise InputError(f"{filename}: the DICOM file is corrupt or truncated ({error})") from error


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
    # SimpleITK reads files, not bytes: the upload goes through a private temporary folder.
    with tempfile.TemporaryDirectory(prefix="mriseg-dicom-") as folder:
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
