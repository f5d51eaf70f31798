"""Data sets in the Kaggle "Brain MRI segmentation" (LGG) layout and the patient-level split.

Layout: ``<root>/<patient folder>/<patient folder>_<slice>.<ext>`` with the mask beside it as
``..._<slice>_mask.<ext>`` (PNG, or the original 3-channel TIFF whose channel 1 is FLAIR).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mriseg.data.io import read_image_file, read_mask_file

SLICE_PATTERN = re.compile(r"^(?P<patient>.+)_(?P<index>\d+)\.(?P<ext>png|tif|tiff)$", re.IGNORECASE)


def site_of(patient: str) -> str:
    """Scanner site code (CS, DU, EZ, FG, HT) from a name like ``TCGA_CS_4941_19960909``; "unknown" otherwise."""
    parts = patient.split("_")
    return parts[1] if len(parts) > 2 else "unknown"


@dataclass
class PatientCase:
    """One patient folder: slice image files in head order with the mask file of each."""

    name: str
    images: list[Path] = field(default_factory=list)
    masks: list[Path] = field(default_factory=list)

    @property
    def site(self) -> str:
        return site_of(self.name)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the (slices, H, W) float32 image volume and the boolean mask volume."""
        image = np.stack([read_image_file(path) for path in self.images])
        mask = np.stack([read_mask_file(path) for path in self.masks])
        return image, mask


def find_cases(root: str | Path) -> list[PatientCase]:
    """All patient folders under ``root`` in the Kaggle layout, slices sorted numerically.

    Raises:
        FileNotFoundError: when ``root`` holds no slice with a mask beside it.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    cases = []
    for folder in sorted(path for path in root.iterdir() if path.is_dir()):
        indexed = []
        for path in folder.iterdir():
            match = SLICE_PATTERN.match(path.name)
            if not match:
                continue
            mask = path.with_name(f"{match['patient']}_{match['index']}_mask.{match['ext']}")
            if mask.exists():
                indexed.append((int(match["index"]), path, mask))
        if indexed:
            indexed.sort()
            cases.append(PatientCase(folder.name, [item[1] for item in indexed], [item[2] for item in indexed]))
    if not cases:
        raise FileNotFoundError(
            f"no slices in the Kaggle layout under {root}: expected <patient>/<patient>_<n>.png with "
            "<patient>_<n>_mask.png beside each"
        )
    return cases


def split_by_patient(names: list[str], validation_fraction: float = 0.2, seed: int = 0) -> dict[str, list[str]]:
    """Patient-level train/validation split, stratified by scanner site.

    Within each site the patients are shuffled with ``seed`` and ``round(n * validation_fraction)`` of them go
    to validation, so every site with enough patients is represented on both sides.
    """
    by_site: dict[str, list[str]] = {}
    for name in sorted(names):
        by_site.setdefault(PatientCase(name).site, []).append(name)
    rng = random.Random(seed)
    split: dict[str, list[str]] = {"train": [], "validation": []}
    for site in sorted(by_site):
        members = by_site[site]
        rng.shuffle(members)
        n_validation = round(len(members) * validation_fraction)
        split["validation"] += sorted(members[:n_validation])
        split["train"] += sorted(members[n_validation:])
    split["train"].sort()
    split["validation"].sort()
    return split


def load_split(path: str | Path) -> dict[str, list[str]]:
    split = json.loads(Path(path).read_text())
    overlap = set(split["train"]) & set(split["validation"])
    if overlap:
        raise ValueError(f"split {path} puts patients on both sides: {sorted(overlap)}")
    return {"train": split["train"], "validation": split["validation"]}
