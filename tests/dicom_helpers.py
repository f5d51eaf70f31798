"""DICOM series made in the tests: a textured volume with an off-centre blob, stacked in any plane and written as
one file per slice, so any flipped or swapped axis shows."""

from __future__ import annotations

import io
import zipfile

import numpy as np
from helpers import make_dicom, mr_dataset

# A test volume indexed [x, y, z] along DICOM's patient axes (x to the patient's left, y posterior, z to the head),
# textured and with a bright blob off centre on every axis, so any flipped or swapped axis shows.
SHAPE = (48, 40, 36)
SPACING = np.array([0.9, 1.1, 2.0])
ORIGIN = np.array([-20.0, 30.0, -40.0])
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# ImageOrientationPatient (row, column) as scanners write these planes.
PLANES = {"axial": ((1, 0, 0), (0, 1, 0)), "sagittal": ((0, 1, 0), (0, 0, -1)), "coronal": ((1, 0, 0), (0, 0, -1))}


def blob_volume() -> np.ndarray:
    x, y, z = np.indices(SHAPE)
    texture = 100 + 10 * ((7 * x + 3 * y + 5 * z) % 11)
    blob = (x - 12) ** 2 + (y - 28) ** 2 + (z - 25) ** 2 < 30
    return np.where(blob, 900, texture).astype(np.uint16)


def axial_slices(volume: np.ndarray) -> np.ndarray:
    """What mriseg shows: slices from foot to head, anterior at the top, the patient's right on the image's left."""
    return volume.transpose(2, 1, 0).astype(np.float32)


def canonical_affine() -> np.ndarray:
    """RAS+ affine of the volume's axial slices as a canonical (x to the right) NIfTI array."""
    far_corner = ORIGIN + (np.array(SHAPE) - 1) * SPACING  # the canonical array starts at the right, anterior end
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = [-far_corner[0], -far_corner[1], ORIGIN[2]]
    return affine


def stack(volume: np.ndarray, row, column) -> tuple[np.ndarray, np.ndarray]:
    """``volume`` as slices along row x column, rows along ``column`` and columns along ``row`` (patient axes, as
    in ImageOrientationPatient), with the LPS affine of the (slice, row, column) indices."""
    directions = [np.cross(row, column), np.asarray(column), np.asarray(row)]
    axes = [int(np.flatnonzero(direction)[0]) for direction in directions]
    flipped = [direction[axis] < 0 for direction, axis in zip(directions, axes, strict=True)]
    slices = np.transpose(volume, axes)[tuple(slice(None, None, -1 if flip else 1) for flip in flipped)]
    start = np.zeros(3)
    affine = np.eye(4)
    for index, (direction, axis, flip) in enumerate(zip(directions, axes, flipped, strict=True)):
        start[axis] = volume.shape[axis] - 1 if flip else 0
        affine[:3, index] = direction * SPACING[axis]
    affine[:3, 3] = ORIGIN + start * SPACING
    return slices, affine


def axis_spacing(affine: np.ndarray, axis: int) -> float:
    return float(np.linalg.norm(affine[:3, axis]))


def series_zip(slices: np.ndarray, affine: np.ndarray, series: str | None = None, **attributes) -> bytes:
    """One DICOM file per slice, zipped in shuffled order with misleading instance numbers; ``attributes`` are
    written into every file (the UIDs a series shares, say)."""
    row, column = affine[:3, 2] / axis_spacing(affine, 2), affine[:3, 1] / axis_spacing(affine, 1)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for count, index in enumerate(np.random.default_rng(0).permutation(len(slices))):
            position = tuple((affine @ [index, 0, 0, 1])[:3].round(4))
            data = make_dicom(slices[index], spacing=(axis_spacing(affine, 1), axis_spacing(affine, 2)),
                              position=position, orientation=(*row.round(6), *column.round(6)), instance=count + 1,
                              series=series, **attributes)
            archive.writestr(f"series/IM{count:04d}.dcm", data)
    return buffer.getvalue()


def enhanced_dicom(volume: np.ndarray, row, column, *, duplicate: bool = False, **attributes) -> bytes:
    """An enhanced MR file: frames stored shuffled, each with its position, spacing and rescale (frame ``k`` stored
    ``10 * k`` above its value) in per-frame functional groups, the orientation shared; ``attributes`` as they are."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedMRImageStorage

    slices, affine = stack(volume, row, column)
    order = np.random.default_rng(1).permutation(len(slices))
    if duplicate:
        order[1] = order[0]
    ds = mr_dataset(EnhancedMRImageStorage)
    ds.Rows, ds.Columns = slices.shape[1:]
    ds.NumberOfFrames = len(order)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [*row, *column]
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames, stored = [], []
    for count, index in enumerate(order):
        frame = Dataset()
        frame.PlanePositionSequence = Sequence([Dataset()])
        frame.PlanePositionSequence[0].ImagePositionPatient = list((affine @ [index, 0, 0, 1])[:3].round(4))
        frame.PixelMeasuresSequence = Sequence([Dataset()])
        frame.PixelMeasuresSequence[0].PixelSpacing = [axis_spacing(affine, 1), axis_spacing(affine, 2)]
        frame.PixelMeasuresSequence[0].SliceThickness = axis_spacing(affine, 0)
        # Each frame stored with its own offset, undone by its own rescale intercept.
        frame.PixelValueTransformationSequence = Sequence([Dataset()])
        frame.PixelValueTransformationSequence[0].RescaleSlope = 1
        frame.PixelValueTransformationSequence[0].RescaleIntercept = -10 * count
        frame.PixelValueTransformationSequence[0].RescaleType = "US"
        frames.append(frame)
        stored.append(slices[index] + 10 * count)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.stack(stored).astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
