"""Training the U-Net on slices in the Kaggle LGG layout, with a patient-level validation split.

Resumable: every epoch writes a checkpoint (model, optimiser state, log) as safetensors + JSON into the run
folder, and ``--resume`` continues from it. The best epoch by validation per-volume Dice is kept as a complete
weights folder (``<run>/best``) that the app and the CLI load directly.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision import tv_tensors
from torchvision.transforms import v2
from tqdm.auto import tqdm

from mriseg.data.brain_extraction import strip_skull
from mriseg.data.lgg import PatientCase, find_cases, load_split
from mriseg.inference import Segmenter, native_bf16, resolve_device
from mriseg.metrics import dice
from mriseg.model import UNet, UNetConfig, create_model, widen_input
from mriseg.postprocessing import PostprocessingConfig, binarize
from mriseg.preprocessing import PreprocessingConfig, Preprocessor
from mriseg.weights.bundle import kept_epoch, load_model, load_segmenter, read_config, save_bundle

LOG_NAME = "training_log.csv"
# What a weights folder's config says about how it was made; a warm restart keeps it as its lineage.
LINEAGE_KEYS = ("training", "best_epoch", "averaged_epochs", "initialised_from", "preprocessing", "mixed_precision",
                "device_trained_on", "stopped_at_epoch")
LOG_FIELDS = ("epoch", "train_loss", "val_dice_mean", "val_dice_median", "learning_rate", "seconds")


@dataclass
class TrainConfig:
    """The training recipe (stored in the weights' config.json).

    Args:
        epochs: total epochs; the learning rate follows a cosine from ``learning_rate`` to 1 % of it over them.
        batch_size: slices per step.
        learning_rate: AdamW peak learning rate (after a warm-up of ``warmup_steps``).
        weight_decay: AdamW weight decay.
        positive_fraction: share of sampled slices that contain tumour (the rest are tumour-free, so the model
            learns to leave healthy slices empty).
        steps_per_epoch: optimiser steps an epoch; 0 means one pass over the training slices.
        seed: seeds Python, NumPy and torch, and each epoch's sampling.
        bf16: mixed precision (bfloat16 autocast) where the device runs it fast: always on CUDA, and on CPUs
            with native bfloat16 instructions (about twice as fast there as float32).
        augmentation: "standard" (mirror, rotation ±10°, scale ±10 %, contrast/brightness jitter), "strong"
            (also gamma, blur and noise, rotation ±15°, scale ±20 %: scanners differ in contrast, sharpness
            and noise far more than 72 training patients show) or "mri" ("strong" plus bias field, anisotropic
            resampling and thinner slices, see :func:`training_augmentation`).
        recall_weight: how much the overlap term of the loss penalises missed tumour against false alarms (the
            Tversky index); 0.5 weighs both alike and is the soft Dice, above 0.5 favours recall (faint tumour
            edges are the commonest misses here), below favours precision.
        dice_per_slice: take the overlap term on each slice that has tumour and average, instead of over the
            whole batch: pooled, large tumours outweigh the small ones at a lesion's top and bottom slices, which
            are where the misses are (per-volume Dice counts a small lesion as much as a large one).
        skull_strip: share of the sampled training slices shown skull-stripped (brain only, made by
            :mod:`mriseg.data.brain_extraction`), so the model stops reading a bright rim at the head's edge as scalp.
            Above 0, the validation that picks the epoch scores skull-stripped copies of the validation patients
            beside the originals, and the logged validation Dice is the mean over both.
        teacher: a weights folder (a U-Net or an ensemble) whose probabilities on each training slice, computed once
            on the slice as stored (skull on), the network also learns to match, whatever it is shown (a stripped
            or augmented copy included): knowledge distillation, which carries what a stronger or differently
            trained model knows into this one, and asks the same answer of a slice with and without its skull.
        teacher_weight: weight of the cross-entropy against the teacher's probabilities, added to the loss against
            the reference masks.
        hard_negative_boost: tumour-free training slices on which the starting weights of a warm restart (``--init``)
            mark tumour (their own threshold and speck filter, not the 3D filter, on the slices as stored or, when
            ``skull_strip`` shows stripped slices, on their stripped copies) are drawn this many times as often
            as the other tumour-free slices, within the same share of tumour-free slices: more of the bright caps
            and skull-base artefacts the model outlines wrongly. 1 draws every tumour-free slice alike.
        balance_patients: draw every patient's tumour slices as often in all as any other patient's, instead of
            every tumour slice alike: per-volume Dice counts a patient with a small tumour on a few slices as much
            as one with a large tumour on thirty, but drawn slice by slice the large tumours fill most batches.
    """

    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    positive_fraction: float = 0.5
    steps_per_epoch: int = 0
    seed: int = 0
    bf16: bool = True
    augmentation: str = "standard"
    recall_weight: float = 0.5
    dice_per_slice: bool = False
    skull_strip: float = 0.0
    teacher: str | None = None
    teacher_weight: float = 0.5
    hard_negative_boost: float = 1.0
    balance_patients: bool = False
    architecture: UNetConfig = field(default_factory=UNetConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)

    def to_dict(self) -> dict:
        values = asdict(self)
        values.pop("architecture")
        values.pop("preprocessing")
        return values


class IntensityJitter(v2.Transform):
    """Random contrast and brightness change of the (normalised) image; masks pass through untouched."""

    def __init__(self, scale: tuple[float, float] = (0.85, 1.15), shift: tuple[float, float] = (-0.15, 0.15)) -> None:
        super().__init__()
        self.scale = scale
        self.shift = shift

    def make_params(self, flat_inputs: list) -> dict:
        return {"scale": random.uniform(*self.scale), "shift": random.uniform(*self.shift)}

    def transform(self, inpt, params: dict):
        if isinstance(inpt, tv_tensors.Mask):
            return inpt
        return inpt * params["scale"] + params["shift"]


class ContextJitter(v2.Transform):
    """For 2.5D input (the slice and its neighbours as channels): reverse the neighbours' order half the time,
    since volumes arrive top-down or bottom-up, and with probability ``lone`` show the slice alone (its own
    neighbours), as a single uploaded 2D image reaches the model. With probability ``thin`` the neighbours move part
    of the way towards the slice itself, as they look in a volume of thinner slices than the training set's (1 mm
    research volumes against its several millimetres). Masks pass through untouched.
    """

    def __init__(self, lone: float = 0.1, thin: float = 0.0) -> None:
        super().__init__()
        self.lone = lone
        self.thin = thin

    def make_params(self, flat_inputs: list) -> dict:
        return {"reverse": random.random() < 0.5, "lone": random.random() < self.lone,
                "thin": random.uniform(0.1, 0.9) if random.random() < self.thin else None}

    def transform(self, inpt, params: dict):
        if isinstance(inpt, tv_tensors.Mask) or inpt.shape[-3] == 1:
            return inpt
        centre = inpt.shape[-3] // 2
        middle = inpt[..., centre : centre + 1, :, :]
        if params["lone"]:
            return tv_tensors.wrap(middle.expand_as(inpt).clone(), like=inpt)
        if params["thin"] is not None:
            inpt = tv_tensors.wrap(middle + params["thin"] * (inpt - middle), like=inpt)
        return tv_tensors.wrap(inpt.flip(-3), like=inpt) if params["reverse"] else inpt


class RandomGamma(v2.Transform):
    """Gamma curve on the image's own range (min to max), with probability ``p``: tumour and brain move apart or
    closer in brightness, as they do between FLAIR protocols. Masks pass through untouched.
    """

    def __init__(self, gamma: tuple[float, float] = (0.7, 1.5), p: float = 0.3) -> None:
        super().__init__()
        self.gamma = gamma
        self.p = p

    def make_params(self, flat_inputs: list) -> dict:
        return {"apply": random.random() < self.p, "gamma": math.exp(random.uniform(*map(math.log, self.gamma)))}

    def transform(self, inpt, params: dict):
        if isinstance(inpt, tv_tensors.Mask) or not params["apply"]:
            return inpt
        low, high = inpt.amin(dim=(-2, -1), keepdim=True), inpt.amax(dim=(-2, -1), keepdim=True)
        span = (high - low).clamp_min(1e-6)
        return tv_tensors.wrap(low + span * ((inpt - low) / span) ** params["gamma"], like=inpt)


class MRIArtefacts(v2.Transform):
    """TorchIO's MRI-specific augmentations on the image (masks pass through untouched): a smooth bias field
    (coil inhomogeneity: one side of the head brighter than the other) and anisotropic resampling (a volume
    acquired in thick sagittal or coronal slices and reformatted to axial is blurred along one in-plane axis).

    Expects the background at 0 (:class:`SliceDataset` shifts it there), so the multiplicative field leaves the
    background dark.
    """

    def __init__(self, bias_field: float = 0.3, anisotropy: float = 0.2) -> None:
        super().__init__()
        import torchio

        self.artefacts = torchio.Compose([
            torchio.RandomBiasField(coefficients=0.4, order=3, p=bias_field),
            torchio.RandomAnisotropy(axes=(0, 1), downsampling=(1.5, 4.0), p=anisotropy),
        ])

    def transform(self, inpt, params: dict):
        if isinstance(inpt, tv_tensors.Mask):
            return inpt
        import torchio

        volume = torchio.ScalarImage(tensor=inpt.as_subclass(torch.Tensor).float()[..., None])
        return tv_tensors.wrap(self.artefacts(volume).data[..., 0].to(inpt.dtype), like=inpt)


AUGMENTATIONS = ("standard", "strong", "mri")


def training_augmentation(strength: str = "standard") -> v2.Compose:
    """Joint image + mask augmentation: neighbour order (2.5D), mirror, rotation/scale/shift, intensity; "strong"
    widens the geometry and adds gamma, blur and noise (image only); "mri" is "strong" plus scanner differences
    the LGG set lacks: TorchIO's bias field and anisotropic resampling, and thinner slices between neighbours."""
    if strength not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, not {strength!r}")
    if strength == "standard":
        return v2.Compose([
            ContextJitter(),
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1)),
            IntensityJitter(),
        ])
    mri = strength == "mri"
    return v2.Compose([
        ContextJitter(thin=0.25 if mri else 0.0),
        v2.RandomHorizontalFlip(),
        v2.RandomAffine(degrees=15, translate=(0.08, 0.08), scale=(0.8, 1.2)),
        *([MRIArtefacts()] if mri else []),
        RandomGamma(),
        v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.3, 1.0))], p=0.2),
        IntensityJitter(scale=(0.75, 1.3), shift=(-0.25, 0.25)),
        v2.RandomApply([v2.GaussianNoise(sigma=0.1, clip=False)], p=0.2),
    ])


class SliceDataset(Dataset):
    """Preprocessed model inputs ((N, C, G, G), or (N, G, G) for one channel) and soft masks, augmented on access.

    The image is shifted so its background sits at 0 during the geometric transform, so the corners a
    rotation uncovers get background intensity rather than a mid-grey. ``stripped`` holds skull-stripped inputs of
    the same slices, drawn instead of the originals with probability ``strip_probability``. With ``teacher``
    probabilities the target gets them as a second channel, moved with the mask.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, augment: v2.Transform | None = None,
                 stripped: np.ndarray | None = None, strip_probability: float = 0.0,
                 teacher: np.ndarray | None = None) -> None:
        self.images = torch.from_numpy(images)
        self.masks = torch.from_numpy(masks if teacher is None else np.stack([masks, teacher], axis=1))
        self.augment = augment
        self.stripped = None if stripped is None else torch.from_numpy(stripped)
        self.strip_probability = strip_probability

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        use_stripped = self.stripped is not None and random.random() < self.strip_probability
        image = (self.stripped if use_stripped else self.images)[index]
        image = image[None] if image.ndim == 2 else image
        mask = self.masks[index]
        mask = mask[None] if mask.ndim == 2 else mask
        if self.augment is not None:
            background = image.min()
            image, mask = self.augment(tv_tensors.Image(image - background), tv_tensors.Mask(mask))
            image = image.as_subclass(torch.Tensor) + background
            mask = mask.as_subclass(torch.Tensor)
        return image, mask


@dataclass
class SlicesForTraining:
    """The training slices on the grid: model inputs, reference masks, and (when asked for) skull-stripped inputs
    and a teacher's probabilities."""

    images: np.ndarray
    masks: np.ndarray
    stripped: np.ndarray | None = None
    teacher: np.ndarray | None = None
    false_alarms: np.ndarray | None = None  # per slice: tumour-free, yet marked by the miner
    patients: np.ndarray | None = None  # per slice: the index of its patient among the cases


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, recall_weight: float = 0.5,
                  smooth: float = 1.0, per_slice: bool = False) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice (a Tversky index when ``recall_weight`` is not 0.5).

    Cross-entropy alone is dominated by the ~99 % background pixels; the Dice term measures overlap with the
    tumour itself, whatever its size. Its denominator 2·TP + FP + FN becomes 2·TP + 2(1-w)·FP + 2w·FN, so
    ``recall_weight`` w above 0.5 makes a missed tumour pixel cost more than a false alarm. The Dice term is
    taken over the whole batch, or with ``per_slice`` on each slice that has tumour and averaged (tumour-free
    slices then count through the cross-entropy only).

    Example:
        >>> target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
        >>> misses_one = torch.tensor([[20.0, -20.0, -20.0, -20.0]])  # one tumour pixel missed
        >>> bce_dice_loss(misses_one, target, 0.7) > bce_dice_loss(misses_one, target, 0.5)
        tensor(True)
    """
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probabilities = torch.sigmoid(logits)
    dims = tuple(range(1, target.ndim)) if per_slice else tuple(range(target.ndim))
    true_positive = (probabilities * target).sum(dims)
    false_positive = probabilities.sum(dims) - true_positive
    false_negative = target.sum(dims) - true_positive
    overlap = (2 * true_positive + smooth) / (
        2 * true_positive + 2 * (1 - recall_weight) * false_positive + 2 * recall_weight * false_negative + smooth)
    if per_slice:
        overlap = overlap[target.sum(dims) > 0]
        if overlap.numel() == 0:
            return bce
    return bce + (1 - overlap).mean()


def prepare_slices(cases: list[PatientCase], preprocessor: Preprocessor, desc: str, skull_stripped: bool = False,
                   teacher: Segmenter | None = None, miner: Segmenter | None = None) -> SlicesForTraining:
    """Model inputs and grid masks of every slice of ``cases``; with ``skull_stripped`` the model inputs of their
    skull-stripped copies too (a slice the brain extraction cannot strip keeps its skull), with ``teacher`` its
    probabilities on the slices as stored, on the grid, and with ``miner`` the tumour-free slices it marks (its
    threshold and speck filter, on the slices as stored and, with ``skull_stripped``, on the stripped copy too,
    where most of its false alarms are; not its 3D filter, which hides most of the network's false blobs from the
    mask but not from the loss); each patient read once."""
    images, masks, stripped, taught, false_alarms = [], [], [], [], []
    if miner is not None:
        network_alarms = PostprocessingConfig(threshold=miner.postprocessing.threshold,
                                              min_component_fraction=miner.postprocessing.min_component_fraction)
    for case in tqdm(cases, desc=desc, unit="patient", leave=False):
        volume, mask = case.load()
        images.append(preprocessor.volume_to_input(volume))
        masks.append(np.stack([preprocessor.mask_to_grid(m) for m in mask]))
        copies = [volume]
        if skull_stripped:
            copies.append(strip_skull(volume, mask)[0])
            stripped.append(preprocessor.volume_to_input(copies[-1]))
        if teacher is not None:
            taught.append(np.stack([preprocessor.mask_to_grid(p) for p in teacher.predict(volume).mean]))
        if miner is not None:
            marked = np.any([binarize(miner.predict(copy).mean, network_alarms).any(axis=(1, 2))
                             for copy in copies], axis=0)
            false_alarms.append(marked & ~mask.any(axis=(1, 2)))
    return SlicesForTraining(np.concatenate(images), np.concatenate(masks),
                             np.concatenate(stripped) if stripped else None,
                             np.concatenate(taught) if taught else None,
                             np.concatenate(false_alarms) if false_alarms else None,
                             np.repeat(np.arange(len(masks)), [len(patient) for patient in masks]))


def load_validation(cases: list[PatientCase], skull_stripped: bool = False) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, volume, mask) of each validation patient, followed, with ``skull_stripped``, by a stripped copy of
    each (named ``<patient> (skull-stripped)``)."""
    loaded = [(case.name, *case.load()) for case in cases]
    if skull_stripped:
        loaded += [(f"{name} (skull-stripped)", strip_skull(volume, mask)[0], mask) for name, volume, mask in loaded]
    return loaded


def sampling_weights(masks: np.ndarray, positive_fraction: float, hard: np.ndarray | None = None,
                     boost: float = 1.0, patients: np.ndarray | None = None) -> np.ndarray:
    """Per-slice sampling weights so that ``positive_fraction`` of the drawn slices contain tumour; among the
    tumour-free ones, the ``hard`` slices weigh ``boost`` times as much as the others. Given each slice's
    ``patients`` index, every patient with tumour gets the same share of the tumour draws, split evenly over its
    tumour slices; otherwise every tumour slice is drawn alike.

    Example:
        >>> masks = np.zeros((4, 2, 2)); masks[0, 0, 0] = 1  # one tumour slice, three tumour-free
        >>> sampling_weights(masks, 0.5).round(3).tolist()
        [0.5, 0.167, 0.167, 0.167]
        >>> sampling_weights(masks, 0.5, hard=np.array([False, True, False, False]), boost=4.0).round(3).tolist()
        [0.5, 0.333, 0.083, 0.083]
        >>> masks[1:3, 0, 0] = 1  # patient 0: tumour on slices 0 and 1; patient 1: on slice 2, slice 3 empty
        >>> sampling_weights(masks, 0.5, patients=np.array([0, 0, 1, 1])).round(3).tolist()
        [0.125, 0.125, 0.25, 0.5]
    """
    positive = masks.reshape(len(masks), -1).max(axis=1) > 0
    negative_weight = np.where(hard & ~positive, boost, 1.0) if hard is not None else np.ones(len(masks))
    negative_weight[positive] = 0.0
    negative_total = max(float(negative_weight.sum()), 1e-12)
    # without patients every slice is a group of its own, so every tumour slice is drawn alike
    groups = np.arange(len(masks)) if patients is None else patients
    tumour_slices_of = np.bincount(groups[positive], minlength=len(groups))
    positive_weight = 1.0 / (max(1, np.count_nonzero(tumour_slices_of)) * np.maximum(tumour_slices_of[groups], 1))
    return np.where(positive, positive_fraction * positive_weight,
                    (1 - positive_fraction) * negative_weight / negative_total)


def per_volume_dice(segmenter: Segmenter, cases: list[tuple[str, np.ndarray, np.ndarray]],
                    threshold: float = 0.5) -> dict[str, float]:
    """Dice of each patient's whole stack of slices at the original resolution."""
    return {name: dice(segmenter.predict(volume).mean >= threshold, mask) for name, volume, mask in cases}


def learning_rate_at(step: int, total_steps: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
    floor = 0.01 * config.learning_rate
    return floor + 0.5 * (config.learning_rate - floor) * (1 + math.cos(math.pi * progress))


def _save_checkpoint(folder: Path, model: UNet, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Model and AdamW state as safetensors, counters as JSON; written to a temp name then renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    save_file(tensors, str(folder / "checkpoint.tmp"))
    (folder / "checkpoint.tmp").replace(folder / "checkpoint.safetensors")
    state = dict(state, param_groups=optimizer_state["param_groups"])
    (folder / "state.json").write_text(json.dumps(state, indent=2))


def _load_checkpoint(folder: Path, model: UNet, optimizer: torch.optim.Optimizer) -> dict:
    tensors = load_file(str(folder / "checkpoint.safetensors"))
    state = json.loads((folder / "state.json").read_text())
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer_state: dict = {"state": {}, "param_groups": state.pop("param_groups")}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optimizer_state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(optimizer_state)
    return state


def _start_log_from(previous: Path, path: Path, last_epoch: int) -> None:
    """Open the run's log with the rows of ``previous`` up to ``last_epoch`` (the history of the starting weights)."""
    if not previous.exists():
        return
    with open(previous, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) <= last_epoch]
    path.unlink(missing_ok=True)
    for row in rows:
        _append_log(path, row)


def _append_log(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({key: row[key] for key in LOG_FIELDS})


def _initial_state(initial: UNet, initial_config: dict, config: TrainConfig, source: str) -> dict:
    """The weights a warm restart starts from: ``initial``'s, checked against the recipe.

    A one-slice U-Net may start a 2.5D run (same network otherwise): its first convolution gets zero weights for
    the neighbouring slices, so the run starts out predicting exactly what the starting weights did. The run may
    also move to another grid size: the U-Net is fully convolutional, so its filters carry over to a finer grid,
    where they meet anatomy at another scale and need the run to adapt, or to normalisation by the volume instead of
    the slice, which changes most slices' intensities only a little.
    """
    if not isinstance(initial, UNet):
        raise ValueError(f"{source} is an ensemble: start from one of its members' weights folders (python -m "
                         f"mriseg members --weights {source} --out DIR writes them)")
    preprocessing = PreprocessingConfig.from_dict(initial_config["preprocessing"])
    adds_context = preprocessing.context_slices == 0 < config.preprocessing.context_slices and (
        initial.config.in_channels == 1)
    if adds_context:
        initial = widen_input(initial, config.architecture.in_channels)
        preprocessing = replace(preprocessing, context_slices=config.preprocessing.context_slices)
    if initial.config != config.architecture:
        raise ValueError(f"{source} has another architecture: {initial_config['architecture']}")
    moved = replace(preprocessing, grid_size=config.preprocessing.grid_size,
                    normalize_over=config.preprocessing.normalize_over)
    if moved != config.preprocessing:
        raise ValueError(f"{source} was trained with other preprocessing: {initial_config['preprocessing']}")
    return initial.state_dict()


def train(data_dir: str | Path, out_dir: str | Path, split_path: str | Path, config: TrainConfig = TrainConfig(),
          device: str | None = "auto", resume: bool = False, max_patients: int | None = None,
          init_from: str | Path | None = None, time_budget: float | None = None, workers: int = 0) -> dict:
    """Train a U-Net, checkpointing every epoch; returns the final state (epochs done, best Dice ...).

    Args:
        data_dir: a folder in the Kaggle LGG layout.
        out_dir: the run folder (checkpoint, log, ``best/`` weights folder).
        split_path: JSON with ``train`` and ``validation`` patient folder names.
        config: the recipe.
        device: "auto" picks CUDA when present (with bf16 autocast), else CPU.
        resume: continue from the checkpoint in ``out_dir``.
        max_patients: use only the first N patients of each side (for quick tests).
        init_from: a weights folder whose weights start the run (a warm restart from shipped weights, with a
            fresh optimiser and schedule); its architecture, preprocessing (but for the grid size) and patient
            split must match. The run's epochs are numbered after the epoch those weights come from, its log
            opens with their history and its config records them under ``initialised_from``.
        time_budget: seconds this call may take (slice preparation included). From the second epoch on, the
            run fits its epoch count to the time left at the pace of its last epochs (the first, slowed by
            start-up, not counted; never more than
            ``config.epochs``, and never growing again), so the cosine schedule ends on time instead of being cut
            off at a high learning rate; the config records the count.
        workers: data-loading worker processes (0: augment in the training process). A GPU trains faster than
            one CPU core augments, so give it a few.
    """
    started = time.time()
    check_recipe(config)
    run = TrainingRun(config, out_dir, device, init_from, time_budget, workers, started)
    seed_everything(config.seed)
    run.load_split_and_starting_weights(split_path)
    run.prepare_slices(data_dir, max_patients)
    resuming = resume and run.has_checkpoint()
    run.build_model_and_optimiser(resuming)
    if resuming:
        run.resume()
    epoch = run.state["epoch"] + 1
    while epoch <= run.config.epochs:  # a time budget may shorten the schedule as the run goes
        epoch_started = time.time()
        losses = run.train_epoch(epoch)
        scores = run.validate()
        row = run.log_row(epoch, losses, scores, epoch_started)
        run.fit_schedule_to_time_budget(epoch, row["seconds"])
        run.record_epoch(epoch, row)
        epoch += 1
    return run.state


def check_recipe(config: TrainConfig) -> None:
    """Refuse a recipe whose U-Net does not take the input its preprocessing makes."""
    context = config.preprocessing.context_slices
    if config.architecture.in_channels != config.preprocessing.input_channels:
        raise ValueError(f"the U-Net takes {config.architecture.in_channels} input channels but the preprocessing "
                         f"makes {config.preprocessing.input_channels} (the slice and {context} on each side)")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TrainingRun:
    """One call of :func:`train`: the data, model, optimiser and counters its steps share, one method a step
    (:func:`train` calls them in order). ``config`` and ``recipe`` (what the weights folders record) change on the
    way when a time budget fixes the epoch count.
    """

    split: dict
    initial_state: dict | None  # the weights a warm restart starts from
    initial_config: dict | None
    validation: list[tuple[str, np.ndarray, np.ndarray]]
    dataset: SliceDataset
    sampling_weights: np.ndarray
    steps_per_epoch: int
    model: UNet
    optimizer: torch.optim.Optimizer
    memory_format: torch.memory_format
    mixed_precision: bool
    recipe: dict
    state: dict  # what the checkpoint keeps and train() returns: epochs done, best Dice and epoch ...
    epoch_offset: int  # a warm restart's epochs are numbered after those of its starting weights

    def __init__(self, config: TrainConfig, out_dir: str | Path, device: str | None, init_from: str | Path | None,
                 time_budget: float | None, workers: int, started: float) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir = self.out_dir / "checkpoint"
        self.device = resolve_device(device)
        self.init_from = init_from
        self.time_budget = time_budget
        self.workers = workers
        self.started = started
        self.epoch_seconds: list[float] = []

    def load_split_and_starting_weights(self, split_path: str | Path) -> None:
        """Read the patient split and, for a warm restart, the starting weights, checked against the recipe and the
        split."""
        self.split = load_split(split_path)
        self.initial_state = self.initial_config = None
        if self.init_from is not None:  # checked before minutes of slice preparation, not after
            initial, self.initial_config = load_model(self.init_from)
            self.initial_state = _initial_state(initial, self.initial_config, self.config, str(self.init_from))
            if self.initial_config.get("split") != self.split:
                raise ValueError(f"{self.init_from} was trained on another patient split: its validation patients "
                                 "would leak into training or stop being unseen")

    def prepare_slices(self, data_dir: str | Path, max_patients: int | None) -> None:
        """Preprocess every slice of the training patients into an augmenting, weighted-sampled data set, and read
        the validation patients whole (both with skull-stripped copies when the recipe shows any)."""
        cases = {case.name: case for case in find_cases(data_dir)}
        missing = [name for name in self.split["train"] + self.split["validation"] if name not in cases]
        if missing:
            raise FileNotFoundError(f"patients of the split not found in {data_dir}: {missing[:5]}")
        train_cases = [cases[name] for name in self.split["train"][:max_patients]]
        validation_cases = [cases[name] for name in self.split["validation"][:max_patients]]

        config = self.config
        teacher = None
        if config.teacher is not None:
            if read_config(config.teacher).get("split") != self.split:
                raise ValueError(f"the teacher {config.teacher} was trained on another patient split: what it "
                                 "learned of this run's validation patients would leak into training")
            teacher = load_segmenter(config.teacher, device=self.device)
        miner = None
        if config.hard_negative_boost != 1.0:
            if self.init_from is None:
                raise ValueError("--hard-negative-boost needs --init: the starting weights' false alarms on the "
                                 "training slices are the hard negatives")
            miner = load_segmenter(self.init_from, device=self.device)
        slices = prepare_slices(train_cases, Preprocessor(config.preprocessing), "preparing training slices",
                                skull_stripped=config.skull_strip > 0, teacher=teacher, miner=miner)
        self.validation = load_validation(validation_cases, skull_stripped=config.skull_strip > 0)
        self.dataset = SliceDataset(slices.images, slices.masks, training_augmentation(config.augmentation),
                                    slices.stripped, config.skull_strip, slices.teacher)
        self.sampling_weights = sampling_weights(slices.masks, config.positive_fraction, slices.false_alarms,
                                                 config.hard_negative_boost,
                                                 slices.patients if config.balance_patients else None)
        if slices.false_alarms is not None:
            tqdm.write(f"hard negatives: {int(slices.false_alarms.sum())} tumour-free training slices marked by "
                       f"{self.init_from}, drawn {config.hard_negative_boost:g} times as often")
        self.steps_per_epoch = config.steps_per_epoch or math.ceil(len(self.dataset) / config.batch_size)

    def has_checkpoint(self) -> bool:
        return (self.checkpoint_dir / "checkpoint.safetensors").exists()

    def build_model_and_optimiser(self, resuming: bool) -> None:
        """The U-Net (with the starting weights of a warm restart) on the device, its AdamW, the recipe the weights
        folders record and the counters of a fresh run."""
        config = self.config
        model = create_model(config.architecture)
        self.recipe = {"training": dict(config.to_dict(), init_from=None if self.init_from is None
                                        else str(self.init_from)),
                       "split": self.split, "data": "LGG FLAIR (Kaggle kaggle_3m), 90 patients",
                       "device_trained_on": self.device.type}
        # A warm restart continues the history of the weights it starts from: its epochs are numbered after the
        # epoch those weights come from, and their log up to that epoch opens this run's log.
        self.epoch_offset = 0
        if self.init_from is not None:
            model.load_state_dict(self.initial_state)
            self.epoch_offset = kept_epoch(self.initial_config)
            self.recipe["initialised_from"] = {key: self.initial_config[key] for key in LINEAGE_KEYS
                                               if key in self.initial_config}
            if not resuming:
                _start_log_from(Path(self.init_from) / LOG_NAME, self.out_dir / LOG_NAME, self.epoch_offset)
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.mixed_precision = config.bf16 and native_bf16(self.device)
        self.recipe["mixed_precision"] = "bf16" if self.mixed_precision else "fp32"
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate,
                                           weight_decay=config.weight_decay)
        self.state = {"epoch": 0, "best_dice": -1.0, "best_epoch": 0, "epoch_offset": self.epoch_offset}
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest convolutions once

    def resume(self) -> None:
        """Continue from the run folder's checkpoint: weights, optimiser state and counters."""
        self.state = _load_checkpoint(self.checkpoint_dir, self.model, self.optimizer)
        tqdm.write(f"resumed from {self.checkpoint_dir} after epoch {self.state['epoch']}")
        if "fitted_epochs" in self.state:  # a time budget already fixed the schedule's length
            self.config = replace(self.config, epochs=self.state["fitted_epochs"])
            self.recipe["training"].update(epochs=self.config.epochs, time_budget_s=self.state.get("time_budget_s"))
        self.epoch_offset = self.state.get("epoch_offset", 0)

    def train_epoch(self, epoch: int) -> list[float]:
        """One epoch of optimiser steps on sampled, augmented slices, the learning rate set step by step; the
        losses. Sampling and augmentation are seeded by the epoch, so a resumed run draws what an unbroken one
        would."""
        config, model, optimizer = self.config, self.model, self.optimizer
        model.train()
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        sampler = WeightedRandomSampler(self.sampling_weights, self.steps_per_epoch * config.batch_size,
                                        generator=generator)
        random.seed(config.seed * 1000 + epoch)
        torch.manual_seed(config.seed * 1000 + epoch)
        loader = DataLoader(self.dataset, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                            num_workers=self.workers, pin_memory=self.device.type == "cuda")
        losses = []
        progress = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False)
        for step_in_epoch, (batch, target) in enumerate(progress):
            step = (epoch - 1) * self.steps_per_epoch + step_in_epoch
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(step, self.steps_per_epoch * config.epochs, config)
            batch = batch.to(self.device).contiguous(memory_format=self.memory_format)
            target = target.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.mixed_precision):
                logits = model(batch)
            loss = bce_dice_loss(logits.float(), target[:, :1], config.recall_weight, per_slice=config.dice_per_slice)
            if config.teacher is not None:
                loss = loss + config.teacher_weight * F.binary_cross_entropy_with_logits(logits.float(), target[:, 1:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            progress.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        return losses

    def validate(self) -> list[float]:
        """Per-volume Dice of each validation patient (and skull-stripped copy) at the run's precision."""
        segmenter = Segmenter(self.model, self.config.preprocessing, device=self.device,
                              precision="bf16" if self.mixed_precision else "fp32")
        scores = list(per_volume_dice(segmenter, self.validation).values())
        self.model.train()
        return scores

    def log_row(self, epoch: int, losses: list[float], scores: list[float], started: float) -> dict:
        """The training log's row of an epoch that began at ``started``."""
        return {
            "epoch": self.epoch_offset + epoch,
            "train_loss": round(float(np.mean(losses)), 5),
            "val_dice_mean": round(float(np.mean(scores)), 5),
            "val_dice_median": round(float(np.median(scores)), 5),
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            "seconds": round(time.time() - started, 1),
        }

    def fit_schedule_to_time_budget(self, epoch: int, seconds: float) -> None:
        """Count the epoch's ``seconds`` and, with a time budget, fit the epoch count to the time left."""
        self.epoch_seconds.append(seconds)
        # From this call's second epoch on, fit the schedule to the time left at the pace of the last few epochs;
        # it only ever shrinks, so a GPU that others start sharing shortens it again.
        pace = _epoch_pace(self.epoch_seconds)
        if self.time_budget is None or pace is None:
            return
        fitted = _fit_epochs(epoch, pace, self.time_budget - (time.time() - self.started), self.config.epochs)
        if fitted < self.config.epochs or "fitted_epochs" not in self.state:
            self.config = replace(self.config, epochs=fitted)
            self.recipe["training"].update(epochs=fitted, time_budget_s=self.time_budget)
            self.state.update(fitted_epochs=fitted, time_budget_s=self.time_budget)
            _record_fitted_epochs(self.out_dir / "best" / "config.json", self.recipe["training"])
            tqdm.write(f"time budget {self.time_budget:.0f} s: {fitted} epochs fit")

    def record_epoch(self, epoch: int, row: dict) -> None:
        """Log the epoch, keep its weights as ``best/`` if they beat the best so far, checkpoint the run and keep a
        snapshot of the weights."""
        _append_log(self.out_dir / LOG_NAME, row)
        tqdm.write(f"epoch {row['epoch']}: loss {row['train_loss']:.4f}  validation per-volume Dice "
                   f"mean {row['val_dice_mean']:.4f} median {row['val_dice_median']:.4f}  ({row['seconds']} s)")
        if row["val_dice_mean"] > self.state["best_dice"]:
            self.state.update(best_dice=row["val_dice_mean"], best_epoch=row["epoch"])
            save_bundle(self.out_dir / "best", self.model, self.config.preprocessing, PostprocessingConfig(),
                        dict(self.recipe, best_epoch=row["epoch"], validation_at_training=row))
        self.state["epoch"] = epoch
        _save_checkpoint(self.checkpoint_dir, self.model, self.optimizer, self.state)
        # Every epoch's weights stay (8 MB at width 16) so late epochs can be averaged into one model.
        snapshot_dir = self.out_dir / "epochs"
        snapshot_dir.mkdir(exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                  str(snapshot_dir / f"epoch_{row['epoch']:03d}.safetensors"))


def _record_fitted_epochs(config_path: Path, training: dict) -> None:
    """The best weights saved before the budget fixed the epoch count get the count too."""
    if config_path.exists():
        saved = json.loads(config_path.read_text())
        saved["training"] = training
        config_path.write_text(json.dumps(saved, indent=2))


def _epoch_pace(epoch_seconds: list[float], recent: int = 3) -> float | None:
    """Seconds an epoch takes, from the last ``recent`` epochs of this call; None before its second epoch.

    The call's first epoch is left out: it carries the start-up (cuDNN trying its convolutions, the first worker
    processes, the GPU warming up) and can take more than twice as long as the next ones; counted in, it would
    fit far fewer epochs than the budget holds, and a fitted schedule never grows again.

    Example:
        >>> _epoch_pace([18.0]) is None
        True
        >>> _epoch_pace([18.0, 7.0, 6.0])
        6.5
    """
    steady = epoch_seconds[1:]
    return float(np.mean(steady[-recent:])) if steady else None


def _fit_epochs(done: int, epoch_seconds: float, seconds_left: float, most: int) -> int:
    """Epochs a run can finish: ``done`` so far plus as many more as ``seconds_left`` holds, at most ``most``.

    Example:
        >>> _fit_epochs(2, epoch_seconds=10.0, seconds_left=95.0, most=40)
        11
        >>> _fit_epochs(2, epoch_seconds=10.0, seconds_left=-5.0, most=40)
        2
    """
    return max(done, min(most, done + int(seconds_left // max(epoch_seconds, 1e-6))))
