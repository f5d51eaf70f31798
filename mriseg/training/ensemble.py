"""Combine separately trained U-Nets into one ensemble weights folder.

Each member is a weights folder written by ``export`` (its config and training log travel with it). The
members must share the preprocessing, but for three things: a one-slice U-Net may join 2.5D members, widened so
that it ignores the neighbouring slices; members trained on different grid sizes each see the input at their
own scale (the ensemble works on the finest grid and averages their probabilities there); and members trained on
slices normalised by slice and by volume each get their own channels of an input that holds both. They must also
share the patient split (otherwise one member's training patients would sit among the others' validation patients
and inflate the validation numbers). The ensemble is then tuned and scored on those validation patients like a
single model. ``split_members`` takes an ensemble apart again, each U-Net into a weights folder of its own.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from mriseg.errors import InputError
from mriseg.model import UNet, UNetEnsemble, narrow_input, widen_input
from mriseg.postprocessing import PostprocessingConfig
from mriseg.preprocessing import PreprocessingConfig
from mriseg.training.export import export_model
from mriseg.training.trainer import LOG_FIELDS, LOG_NAME
from mriseg.weights.bundle import LOG_MEMBER_COLUMN, load_model, log_by_member, recipe_of, save_bundle

MEMBER_COLUMN = LOG_MEMBER_COLUMN
# What each member's entry in the ensemble's config keeps of its own config: how it was made, not what the
# ensemble holds once for all (split, preprocessing) or tunes anew (post-processing, TTA, validation metrics).
MEMBER_DROP = ("split", "data", "tta_default", "validation_metrics")


def combine(folders: Sequence[str | Path]) -> tuple[UNetEnsemble, dict, str]:
    """Load member weights folders into one ensemble.

    Args:
        folders: two or more weights folders (each with ``config.json``, ``model.safetensors`` and
            ``training_log.csv``).

    Returns:
        The ensemble, its config (shared split and preprocessing, one entry per member under ``members``) and
        the members' training logs as one CSV with a ``member`` column (1, 2, ...).
    """
    if len(folders) < 2:
        raise ValueError(f"an ensemble needs at least two weights folders, got {len(folders)}")
    models, configs = [], []
    for folder in folders:
        model, config = load_model(folder)
        if not isinstance(model, UNet):
            raise ValueError(f"{folder} is already an ensemble: list its members' weights folders instead")
        if not (Path(folder) / LOG_NAME).exists():
            raise InputError(f"{folder} has no {LOG_NAME}: export the run first (python -m mriseg export)")
        models.append(model)
        configs.append(config)
    preprocessings = [PreprocessingConfig.from_dict(config["preprocessing"]) for config in configs]
    # Members may differ in context: a one-slice U-Net joins 2.5D ones widened (exactly: it ignores neighbours);
    # in grid size: the ensemble takes the finest grid and shrinks the input for the others; and in normalisation:
    # the input then holds each one (slice first), and each member takes its own channels.
    context = max(preprocessing.context_slices for preprocessing in preprocessings)
    grids = [preprocessing.grid_size for preprocessing in preprocessings]
    used = {preprocessing.normalize_over for preprocessing in preprocessings}
    normalize_over = "+".join(over for over in ("slice", "volume") if over in used)
    shared = replace(preprocessings[0], context_slices=context, grid_size=max(grids), normalize_over=normalize_over)
    members, ready, first_channels = [], [], []
    for folder, model, config, preprocessing in zip(folders, models, configs, preprocessings, strict=True):
        joined = replace(preprocessing, context_slices=context, grid_size=shared.grid_size,
                         normalize_over=normalize_over)
        if preprocessing.context_slices not in (0, context) or joined != shared:
            raise ValueError(f"{folder} uses other preprocessing than {folders[0]} ({config['preprocessing']} vs "
                             f"{configs[0]['preprocessing']}): ensemble members must see the same kind of input")
        if config.get("split") != configs[0].get("split"):
            raise ValueError(f"{folder} was trained on another patient split than {folders[0]}: one member's "
                             "training patients would be among the validation patients that score the ensemble")
        widened = preprocessing.context_slices < context
        if widened:
            model = widen_input(model, shared.channels_per_normalization)
        ready.append(model)
        first_channels.append(shared.normalizations.index(preprocessing.normalize_over)
                              * shared.channels_per_normalization)
        members.append(dict(recipe_of(config, drop=MEMBER_DROP), architecture=model.config.to_dict(),
                            preprocessing=shared.to_dict(), trained_preprocessing=config["preprocessing"],
                            widened_to_context=widened))
    config = {"split": configs[0]["split"], "data": configs[0].get("data"), "members": members,
              "preprocessing": shared.to_dict()}
    ensemble = UNetEnsemble(ready, grids if len(set(grids)) > 1 else None,
                            first_channels if len(used) > 1 else None)
    return ensemble, config, merged_log(folders)


def merged_log(folders: Sequence[str | Path]) -> str:
    """The members' training logs as one CSV, each row tagged with its member number."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=(MEMBER_COLUMN, *LOG_FIELDS), lineterminator="\n")
    writer.writeheader()
    for number, folder in enumerate(folders, start=1):
        with open(Path(folder) / LOG_NAME, newline="") as handle:
            for row in csv.DictReader(handle):
                writer.writerow({MEMBER_COLUMN: number, **{key: row[key] for key in LOG_FIELDS}})
    return out.getvalue()


def build_ensemble(folders: Sequence[str | Path], data_dir: str | Path, out_dir: str | Path, tta: bool = False,
                   device: str = "auto") -> dict:
    """Combine the member folders, tune and score the ensemble on the validation patients, write ``out_dir``.

    Returns:
        The ensemble's validation report.

    Example:
        ``python -m mriseg ensemble --members runs/unet1/weights runs/unet2/weights --data DIR --out weights``
    """
    model, config, log = combine(folders)
    return export_model(model, config, log, data_dir, out_dir, tta=tta, device=device)



def split_members(folder: str | Path, out_dir: str | Path) -> list[Path]:
    """Write each U-Net of an ensemble weights folder as a weights folder of its own: the inverse of ``combine``.

    Each member gets back the input it was trained on (a one-slice U-Net that the ensemble widened for its 2.5D
    members is narrowed to one channel again; its own grid and normalisation), its recipe and its rows of the
    training log, so it can start a warm restart (``train --init``) or join another ensemble. Its own tuned
    post-processing was not kept when the ensemble was made: each folder carries the ensemble's.

    Args:
        folder: an ensemble weights folder (``weights/`` ships one).
        out_dir: where to write ``unet1``, ``unet2``, ...

    Returns:
        The member folders, in the ensemble's order.

    Example:
        ``python -m mriseg members --weights weights --out runs/members``
    """
    model, config = load_model(folder)
    if not isinstance(model, UNetEnsemble):
        raise InputError(f"{folder} holds one U-Net, not an ensemble: use the folder itself")
    log_path = Path(folder) / LOG_NAME
    rows = {}
    if log_path.exists():
        with open(log_path, newline="") as handle:
            rows = log_by_member(list(csv.DictReader(handle)))
    postprocessing = PostprocessingConfig.from_dict(config["postprocessing"])
    written = []
    for number, (unet, member) in enumerate(zip(model.members, config["members"], strict=True), start=1):
        if member.get("widened_to_context"):
            unet = narrow_input(unet)
        recipe = dict(recipe_of(member, drop=("trained_preprocessing", "widened_to_context")),
                      split=config["split"], data=config.get("data"))
        out = save_bundle(Path(out_dir) / f"unet{number}", unet,
                          PreprocessingConfig.from_dict(member["trained_preprocessing"]), postprocessing, recipe)
        with open(out / LOG_NAME, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows.get(number, []))
        written.append(out)
    return written
