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
from mriseg.postprocessing import PostprocessingConfig
from mriseg.preprocessing import PreprocessingConfig, Preprocessor
from mriseg.weights.bundle import kept_epoch, load_model, save_bundle

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
    the same slices, drawn instead of the originals with probability ``strip_probability``.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, augment: v2.Transform | None = None,
                 stripped: np.ndarray | None = None, strip_probability: float = 0.0) -> None:
        self.images = torch.from_numpy(images)
        self.masks = torch.from_numpy(masks)
        self.augment = augment
        self.stripped = None if stripped is None else torch.from_numpy(stripped)
        self.strip_probability = strip_probability

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        use_stripped = self.stripped is not None and random.random() < self.strip_probability
        image = (self.stripped if use_stripped else self.images)[index]
        image = image[None] if image.ndim == 2 else image
        mask = self.masks[index][None]
        if self.augment is not None:
            background = image.min()
            image, mask = self.augment(tv_tensors.Image(image - background), tv_tensors.Mask(mask))
            image = image.as_subclass(torch.Tensor) + background
            mask = mask.as_subclass(torch.Tensor)
        return image, mask


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


def prepare_slices(cases: list[PatientCase], preprocessor: Preprocessor, desc: str, skull_stripped: bool = False
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Model inputs and grid masks of every slice of ``cases``, and with ``skull_stripped`` the model inputs of their
    skull-stripped copies too (a slice the brain extraction cannot strip keeps its skull), each patient read once."""
    images, masks, stripped = [], [], []
    for case in tqdm(cases, desc=desc, unit="patient", leave=False):
        volume, mask = case.load()
        images.append(preprocessor.volume_to_input(volume))
        masks.append(np.stack([preprocessor.mask_to_grid(m) for m in mask]))
        if skull_stripped:
            stripped.append(preprocessor.volume_to_input(strip_skull(volume, mask)[0]))
    return np.concatenate(images), np.concatenate(masks), np.concatenate(stripped) if stripped else None


def load_validation(cases: list[PatientCase], skull_stripped: bool = False) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, volume, mask) of each validation patient, followed, with ``skull_stripped``, by a stripped copy of
    each (named ``<patient> (skull-stripped)``)."""
    loaded = [(case.name, *case.load()) for case in cases]
    if skull_stripped:
        loaded += [(f"{name} (skull-stripped)", strip_skull(volume, mask)[0], mask) for name, volume, mask in loaded]
    return loaded


def sampling_weights(masks: np.ndarray, positive_fraction: float) -> np.ndarray:
    """Per-slice sampling weights so that ``positive_fraction`` of the drawn slices contain tumour."""
    positive = masks.reshape(len(masks), -1).max(axis=1) > 0
    n_positive = max(1, int(positive.sum()))
    n_negative = max(1, int((~positive).sum()))
    return np.where(positive, positive_fraction / n_positive, (1 - positive_fraction) / n_negative)


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
    started_run = time.time()
    context = config.preprocessing.context_slices
    if config.architecture.in_channels != config.preprocessing.input_channels:
        raise ValueError(f"the U-Net takes {config.architecture.in_channels} input channels but the preprocessing "
                         f"makes {config.preprocessing.input_channels} (the slice and {context} on each side)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)

    split = load_split(split_path)
    if init_from is not None:  # checked before minutes of slice preparation, not after
        initial, initial_config = load_model(init_from)
        initial_state = _initial_state(initial, initial_config, config, str(init_from))
        if initial_config.get("split") != split:
            raise ValueError(f"{init_from} was trained on another patient split: its validation patients would "
                             "leak into training or stop being unseen")
    cases = {case.name: case for case in find_cases(data_dir)}
    missing = [name for name in split["train"] + split["validation"] if name not in cases]
    if missing:
        raise FileNotFoundError(f"patients of the split not found in {data_dir}: {missing[:5]}")
    train_cases = [cases[name] for name in split["train"][:max_patients]]
    validation_cases = [cases[name] for name in split["validation"][:max_patients]]

    preprocessor = Preprocessor(config.preprocessing)
    images, masks, stripped = prepare_slices(train_cases, preprocessor, "preparing training slices",
                                             skull_stripped=config.skull_strip > 0)
    validation = load_validation(validation_cases, skull_stripped=config.skull_strip > 0)
    dataset = SliceDataset(images, masks, training_augmentation(config.augmentation), stripped, config.skull_strip)
    weights = sampling_weights(masks, config.positive_fraction)
    steps_per_epoch = config.steps_per_epoch or math.ceil(len(dataset) / config.batch_size)

    checkpoint_dir = out_dir / "checkpoint"
    resuming = resume and (checkpoint_dir / "checkpoint.safetensors").exists()
    model = create_model(config.architecture)
    recipe = {"training": dict(config.to_dict(), init_from=None if init_from is None else str(init_from)),
              "split": split, "data": "LGG FLAIR (Kaggle kaggle_3m), 90 patients",
              "device_trained_on": device.type}
    # A warm restart continues the history of the weights it starts from: its epochs are numbered after the
    # epoch those weights come from, and their log up to that epoch opens this run's log.
    epoch_offset = 0
    if init_from is not None:
        model.load_state_dict(initial_state)
        epoch_offset = kept_epoch(initial_config)
        recipe["initialised_from"] = {key: initial_config[key] for key in LINEAGE_KEYS if key in initial_config}
        if not resuming:
            _start_log_from(Path(init_from) / LOG_NAME, out_dir / LOG_NAME, epoch_offset)
    memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    mixed_precision = config.bf16 and native_bf16(device)
    recipe["mixed_precision"] = "bf16" if mixed_precision else "fp32"
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    state = {"epoch": 0, "best_dice": -1.0, "best_epoch": 0, "epoch_offset": epoch_offset}
    if resuming:
        state = _load_checkpoint(checkpoint_dir, model, optimizer)
        tqdm.write(f"resumed from {checkpoint_dir} after epoch {state['epoch']}")
        if "fitted_epochs" in state:  # a time budget already fixed the schedule's length
            config = replace(config, epochs=state["fitted_epochs"])
            recipe["training"].update(epochs=config.epochs, time_budget_s=state.get("time_budget_s"))
    epoch_offset = state.get("epoch_offset", 0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest convolutions once
    epoch, epoch_seconds = state["epoch"] + 1, []
    while epoch <= config.epochs:
        started = time.time()
        model.train()
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        sampler = WeightedRandomSampler(weights, steps_per_epoch * config.batch_size, generator=generator)
        random.seed(config.seed * 1000 + epoch)
        torch.manual_seed(config.seed * 1000 + epoch)
        loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                            num_workers=workers, pin_memory=device.type == "cuda")
        losses = []
        progress = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False)
        for step_in_epoch, (batch, target) in enumerate(progress):
            step = (epoch - 1) * steps_per_epoch + step_in_epoch
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(step, steps_per_epoch * config.epochs, config)
            batch = batch.to(device).contiguous(memory_format=memory_format)
            target = target.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision):
                logits = model(batch)
            loss = bce_dice_loss(logits.float(), target, config.recall_weight, per_slice=config.dice_per_slice)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            progress.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")

        segmenter = Segmenter(model, config.preprocessing, device=device,
                              precision="bf16" if mixed_precision else "fp32")
        scores = list(per_volume_dice(segmenter, validation).values())
        model.train()
        row = {
            "epoch": epoch_offset + epoch,
            "train_loss": round(float(np.mean(losses)), 5),
            "val_dice_mean": round(float(np.mean(scores)), 5),
            "val_dice_median": round(float(np.median(scores)), 5),
            "learning_rate": optimizer.param_groups[0]["lr"],
            "seconds": round(time.time() - started, 1),
        }
        epoch_seconds.append(row["seconds"])
        # From this call's second epoch on, fit the schedule to the time left at the pace of the last few epochs;
        # it only ever shrinks, so a GPU that others start sharing shortens it again.
        pace = _epoch_pace(epoch_seconds)
        if time_budget is not None and pace is not None:
            fitted = _fit_epochs(epoch, pace, time_budget - (time.time() - started_run), config.epochs)
            if fitted < config.epochs or "fitted_epochs" not in state:
                config = replace(config, epochs=fitted)
                recipe["training"].update(epochs=fitted, time_budget_s=time_budget)
                state.update(fitted_epochs=fitted, time_budget_s=time_budget)
                _record_fitted_epochs(out_dir / "best" / "config.json", recipe["training"])
                tqdm.write(f"time budget {time_budget:.0f} s: {fitted} epochs fit")
        _append_log(out_dir / LOG_NAME, row)
        tqdm.write(f"epoch {row['epoch']}: loss {row['train_loss']:.4f}  validation per-volume Dice "
                   f"mean {row['val_dice_mean']:.4f} median {row['val_dice_median']:.4f}  ({row['seconds']} s)")
        if row["val_dice_mean"] > state["best_dice"]:
            state.update(best_dice=row["val_dice_mean"], best_epoch=row["epoch"])
            save_bundle(out_dir / "best", model, config.preprocessing, PostprocessingConfig(),
                        dict(recipe, best_epoch=row["epoch"], validation_at_training=row))
        state["epoch"] = epoch
        _save_checkpoint(checkpoint_dir, model, optimizer, state)
        # Every epoch's weights stay (8 MB at width 16) so late epochs can be averaged into one model.
        snapshot_dir = out_dir / "epochs"
        snapshot_dir.mkdir(exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(snapshot_dir / f"epoch_{row['epoch']:03d}.safetensors"))
        epoch += 1
    return state


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
