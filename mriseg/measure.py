"""Tumour size from a mask: pixels, mm² when the spacing is known, mL for volumes."""

from __future__ import annotations

import numpy as np

from mriseg.io import Volume


def tumour_size(mask: np.ndarray, volume: Volume) -> dict:
    """Area per slice and in total, in pixels and (when the file records spacing) mm² and mL.

    Args:
        mask: boolean (slices, H, W) mask.
        volume: the volume it belongs to (for the spacing).

    Returns:
        ``pixels`` (all slices), ``slice_pixels`` (list), ``largest_slice`` (index, None without tumour),
        ``area_mm2`` (a single slice's area; None for a volume, whose size is its ``volume_ml``, or without
        spacing: areas of different slices do not add up to anything), ``volume_ml`` (None when the spacing is
        unknown or there is a single slice).
    """
    mask = np.asarray(mask, dtype=bool)
    slice_pixels = mask.reshape(len(mask), -1).sum(axis=1).astype(int).tolist()
    total = int(sum(slice_pixels))
    pixel_area = volume.pixel_area_mm2
    voxel_ml = volume.voxel_volume_ml
    return {
        "pixels": total,
        "slice_pixels": slice_pixels,
        "largest_slice": int(np.argmax(slice_pixels)) if total else None,
        "area_mm2": None if pixel_area is None or len(mask) > 1 else total * pixel_area,
        "volume_ml": None if voxel_ml is None or len(mask) < 2 else total * voxel_ml,
    }
