"""Where the project's folders are, and round-tripping frozen settings dataclasses through ``config.json`` dicts."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

# The one place the project's folders are found: beside the package in a checkout or an editable install
# (`pip install -e .`); MRISEG_HOME points an installed package at a checkout's folders.
PROJECT_ROOT = Path(os.environ.get("MRISEG_HOME") or Path(__file__).resolve().parent.parent)
BUNDLED_WEIGHTS = PROJECT_ROOT / "weights"
SAMPLES_DIR = PROJECT_ROOT / "samples"
DEFAULT_SPLIT = PROJECT_ROOT / "splits" / "lgg-flair.json"

T = TypeVar("T", bound="DictConfig")


class DictConfig:
    """Mixin for dataclasses: ``to_dict()``, and ``from_dict()`` that ignores keys it does not know.

    Ignoring unknown keys lets an older mriseg read a config.json written by a newer one.
    """

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], values: dict) -> T:
        fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
        return cls(**{key: values[key] for key in fields if key in values})
