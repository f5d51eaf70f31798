"""A weights folder in the Hugging Face layout: ``config.json`` + ``model.safetensors`` (+ card, logs, report).

``config.json`` carries the architecture, the preprocessing and post-processing parameters, the sha256 of
``model.safetensors`` and a fingerprint of all of these, so the weights never travel without the way their input
must be prepared, and neither can change unnoticed. Loading never unpickles anything: tensors come from
safetensors, everything else from JSON.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mriseg.errors import InputError
from mriseg.inference import Segmenter
from mriseg.model import Segmentation, create_model
from mriseg.postprocessing import PostprocessingConfig
from mriseg.preprocessing import PreprocessingConfig

CONFIG_NAME = "config.json"
LOG_MEMBER_COLUMN = "member"  # the column of an ensemble's training log naming the U-Net of each row
WEIGHTS_NAME = "model.safetensors"
# What decides a model's output for a given scan: the fingerprint covers these and the weights' sha256.
FINGERPRINTED_KEYS = ("model_type", "architecture", "preprocessing", "postprocessing", "weights_sha256")
# The keys save_bundle derives from the model and its settings; everything else in a config is the caller's.
BUNDLE_KEYS = frozenset({*FINGERPRINTED_KEYS, "fingerprint_sha256"})
VERSION_DIGITS = 12


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_of(config: dict) -> str:
    """The sha256 of the config's :data:`FINGERPRINTED_KEYS` as canonical JSON (sorted keys, no whitespace).

    Example:
        >>> fingerprint_of({"weights_sha256": "00"}) == fingerprint_of({"weights_sha256": "00", "split": {}})
        True
    """
    covered = {key: config.get(key) for key in FINGERPRINTED_KEYS}
    canonical = json.dumps(covered, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def model_version(config: dict) -> str:
    """The version shown for a model: the start of its fingerprint, so it changes with the weights and with
    any setting that changes the output."""
    return config["fingerprint_sha256"][:VERSION_DIGITS]


def save_bundle(folder: str | Path, model: Segmentation, preprocessing: PreprocessingConfig,
                postprocessing: PostprocessingConfig, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (with the weights' sha256 and the fingerprint) into
    ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    config = dict(extra or {})
    config.update(
        model_type="mriseg-unet",
        architecture=model.config.to_dict(),
        preprocessing=preprocessing.to_dict(),
        postprocessing=postprocessing.to_dict(),
        weights_sha256=sha256_of(folder / WEIGHTS_NAME),
    )
    config["fingerprint_sha256"] = fingerprint_of(config)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def recipe_of(config: dict, drop: tuple[str, ...] = ()) -> dict:
    """A config without the keys :func:`save_bundle` writes (and without ``drop``): what to carry to a new bundle."""
    return {key: value for key, value in config.items() if key not in BUNDLE_KEYS and key not in drop}


def member_configs(config: dict) -> list[dict]:
    """How each U-Net of the weights was made: an ensemble's ``members``, or the config itself for one U-Net."""
    return config.get("members") or [config]


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as error:
        raise InputError(f"{path} is missing: a weights folder needs config.json and model.safetensors") from error
    except json.JSONDecodeError as error:
        raise InputError(f"{path} is not valid JSON ({error})") from error


def kept_epoch(config: dict) -> int:
    """The last epoch in the weights of a folder's config: its best epoch, or the last of the averaged ones."""
    averaged = config.get("averaged_epochs")
    return int(averaged[-1] if averaged else config.get("best_epoch") or 0)


def check_config(folder: str | Path, config: dict) -> None:
    """Refuse a config without its sha256 and fingerprint, or one whose fingerprinted settings were edited."""
    path = Path(folder) / CONFIG_NAME
    restore = ("Restore config.json from the original weights folder, or re-export the weights with "
               "`python -m mriseg export`")
    missing = [key for key in ("weights_sha256", "fingerprint_sha256") if not config.get(key)]
    if missing:
        raise InputError(f"{path} records no {' or '.join(missing)}, so these weights cannot be checked. {restore}")
    if fingerprint_of(config) != config["fingerprint_sha256"]:
        raise InputError(f"{path} was edited after export: its preprocessing/post-processing no longer match the "
                         f"fingerprint. {restore}")


def load_model(folder: str | Path) -> tuple[Segmentation, dict]:
    """The U-Net (or ensemble) and its config from a weights folder; the config's fingerprint and the weights'
    sha256 are checked before the weights are read."""
    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.exists():
        raise InputError(f"{weights} is missing")
    check_config(folder, config)
    if sha256_of(weights) != config["weights_sha256"]:
        raise InputError(
            f"{weights} does not match the sha256 recorded in config.json: the file is corrupt or was replaced. "
            "Download the weights again, or reinstall mriseg if these are the weights it ships with"
        )
    model = create_model(config["architecture"])
    try:
        model.load_state_dict(load_file(str(weights)))
    except Exception as error:
        raise InputError(f"{weights} cannot be loaded into the configured model ({error})") from error
    return model, config


def load_segmenter(folder: str | Path, device: str | torch.device | None = "auto",
                   precision: str = "auto") -> Segmenter:
    """A ready :class:`Segmenter` from a weights folder (``precision``: see :class:`Segmenter`)."""
    model, config = load_model(folder)
    return Segmenter(
        model,
        PreprocessingConfig.from_dict(config["preprocessing"]),
        PostprocessingConfig.from_dict(config.get("postprocessing", {})),
        device=device,
        precision=precision,
    )


# Lineage of a config: pure functions of JSON, read by the app's pages, so they live here rather than with the
# trainer and the exporter (importing those pulls in torchvision and the training code).

def context_of(preprocessing: dict | None) -> int:
    """Neighbouring slices on each side in the input (configs from before 2.5D input have none)."""
    return PreprocessingConfig.from_dict(preprocessing or {}).context_slices


def normalization_of(preprocessing: dict | None) -> str:
    """How a stage's slices were normalised: "slice", "volume" (configs from before the option: by slice)."""
    return PreprocessingConfig.from_dict(preprocessing or {}).normalize_over


def grid_of(preprocessing: dict | None) -> int:
    """Side of the model grid a stage saw."""
    return PreprocessingConfig.from_dict(preprocessing or {}).grid_size


def trained_preprocessing(stage: dict) -> dict | None:
    """The preprocessing a stage was trained with (an ensemble member widened to 2.5D records its own)."""
    return stage.get("trained_preprocessing") or stage.get("preprocessing")


def training_stages(config: dict) -> list[dict]:
    """The runs that made these weights, oldest first: each a warm restart of the one before."""
    stages = []
    stage: dict | None = config
    while stage is not None:
        stages.append(stage)
        stage = stage.get("initialised_from")
    return stages[::-1]


def stage_identity(stage: dict) -> str:
    """What makes two recorded stages the same run: recipe, grid, context and normalisation, and the weights kept."""
    preprocessing = trained_preprocessing(stage)
    return json.dumps([stage["training"], stage.get("best_epoch"), stage.get("averaged_epochs"),
                       grid_of(preprocessing), context_of(preprocessing), normalization_of(preprocessing)],
                      sort_keys=True)


def shared_start(stages: list[dict], earlier: list[list[dict]]) -> tuple[int, int]:
    """Whether a member's history starts with stages of an earlier member (it was warm-restarted from weights that
    member passed through, or ended with): (that member's number, how many stages they share), or (0, 0).

    Example:
        >>> first, second, third = ({"training": {"epochs": n, "seed": n}} for n in (1, 2, 3))
        >>> shared_start([first, third], [[first, second]])  # branched off after the first stage
        (1, 1)
        >>> shared_start([third], [[first, second]])
        (0, 0)
    """
    best = (0, 0)
    for number, other in enumerate(earlier, start=1):
        shared = 0
        for a, b in zip(stages, other, strict=False):
            if stage_identity(a) != stage_identity(b):
                break
            shared += 1
        if best[1] < shared < len(stages):
            best = (number, shared)
    return best


def member_origins(config: dict) -> list[int]:
    """For each U-Net of an ensemble config, the number of the earlier member whose weights it started from, or 0
    when it was trained from a random start of its own.

    Example:
        >>> scratch = {"training": {"epochs": 5, "seed": 0}}
        >>> member_origins({"members": [scratch, {"training": {"epochs": 3, "seed": 1}, "initialised_from": scratch}]})
        [0, 1]
    """
    histories = [training_stages(member) for member in member_configs(config)]
    return [shared_start(stages, histories[:number])[0] for number, stages in enumerate(histories)]


def log_by_member(rows: list[dict]) -> dict[int, list[dict]]:
    """Training-log rows grouped by ensemble member (all under 1 for a single U-Net's log)."""
    groups: dict[int, list[dict]] = {}
    for row in rows:
        groups.setdefault(int(row.get(LOG_MEMBER_COLUMN) or 1), []).append(row)
    return groups
