"""Round-tripping frozen settings dataclasses through the plain dicts stored in ``config.json``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, TypeVar

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
