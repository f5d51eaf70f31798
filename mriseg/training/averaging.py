"""Average the weights of several epochs of one run into a single model (stochastic weight averaging).

Late epochs of a run wander around the same low-loss region; their mean usually sits nearer its centre and
generalises better than any one of them, at no cost at inference time. Batch-norm statistics of an averaged
model are not the average of the epochs' statistics, so they are measured again on the training slices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, WeightedRandomSampler

from mriseg.data.lgg import find_cases
from mriseg.inference import Segmenter, resolve_device
from mriseg.model import UNet
from mriseg.postprocessing import PostprocessingConfig
from mriseg.preprocessing import PreprocessingConfig, Preprocessor
from mriseg.training.trainer import SliceDataset, per_volume_dice, prepare_slices, sampling_weights
from mriseg.weights.bundle import load_model, recipe_of, save_bundle


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of each floating-point tensor; integer counters are taken from the last state."""
    if not states:
        raise ValueError("no weights to average")
    averaged = {}
    for name, last in states[-1].items():
        if last.is_floating_point():
            averaged[name] = torch.stack([state[name].float() for state in states]).mean(0).to(last.dtype)
        else:
            averaged[name] = last.clone()
    return averaged


@torch.no_grad()
def recompute_batch_norm(model: UNet, loader: DataLoader, device: torch.device) -> None:
    """Replace every BatchNorm's running mean and variance by their exact average over ``loader``."""
    norms = [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # None: a cumulative average over all batches, not an exponential one
    model.train()
    for batch, _ in loader:
        model(batch.to(device))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()


def average_epochs(run_dir: str | Path, epochs: list[int], data_dir: str | Path, out_dir: str | Path | None = None,
                   device: str = "auto", batches: int = 100, batch_size: int = 16) -> dict:
    """Average the weights a run kept for ``epochs``, refresh batch norm, score it, write a weights folder.

    Args:
        run_dir: a training run folder (``best/`` for the recipe, ``epochs/epoch_NNN.safetensors``).
        epochs: the epoch numbers to average, as written in the run's log.
        data_dir: the data folder the run was trained on.
        out_dir: where to write the averaged weights folder; default ``<run_dir>/average``.
        device: "auto", "cpu" or "cuda".
        batches: training batches (sampled as in training, without augmentation) that measure batch norm.
        batch_size: slices per batch.

    Returns:
        ``{"epochs", "val_dice_mean", "val_dice_median", "folder"}``, the Dice at threshold 0.5 on the run's
        validation patients, the same measure the training log uses.

    Example:
        >>> average_epochs("runs/warm", list(range(55, 68)), "../shared/data/lgg-flair")  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "average"
    device = resolve_device(device)
    model, config = load_model(run_dir / "best")
    paths = [run_dir / "epochs" / f"epoch_{epoch:03d}.safetensors" for epoch in sorted(epochs)]
    missing = [path.name for path in paths if not path.exists()]
    if missing:
        raise FileNotFoundError(f"{run_dir / 'epochs'} lacks {', '.join(missing)}")
    model.load_state_dict(average_state_dicts([load_file(str(path)) for path in paths]))
    model = model.to(device)

    preprocessing = PreprocessingConfig.from_dict(config["preprocessing"])
    cases = {case.name: case for case in find_cases(data_dir)}
    split = config["split"]
    slices = prepare_slices([cases[name] for name in split["train"]], Preprocessor(preprocessing),
                            "preparing training slices")
    generator = torch.Generator().manual_seed(config["training"]["seed"])
    sampler = WeightedRandomSampler(sampling_weights(slices.masks, config["training"]["positive_fraction"]),
                                    batches * batch_size, generator=generator)
    loader = DataLoader(SliceDataset(slices.images, slices.masks), batch_size=batch_size, sampler=sampler)
    recompute_batch_norm(model, loader, device)

    validation = [(name, *cases[name].load()) for name in split["validation"]]
    scores = list(per_volume_dice(Segmenter(model, preprocessing, device=device), validation).values())
    result = {"epochs": sorted(epochs), "val_dice_mean": float(np.mean(scores)),
              "val_dice_median": float(np.median(scores)), "folder": str(out_dir)}
    extra = recipe_of(config, drop=("best_epoch", "validation_at_training"))
    extra.update(averaged_epochs=result["epochs"], validation_at_training={
        "val_dice_mean": round(result["val_dice_mean"], 5), "val_dice_median": round(result["val_dice_median"], 5)})
    save_bundle(out_dir, model.cpu(), preprocessing, PostprocessingConfig(), extra)
    return result
