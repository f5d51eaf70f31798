"""Inference: a :class:`Segmenter` turns a volume into tumour probabilities at the original resolution."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mriseg.model import Segmentation, fold_batchnorm
from mriseg.postprocessing import PostprocessingConfig, binarize
from mriseg.preprocessing import PreprocessingConfig, Preprocessor


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU. Otherwise the named device, checked to exist."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use 'cpu' or 'auto'")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: CUDA, or a CPU with bf16 instructions (AVX512-BF16, AMX)."""
    return device.type == "cuda" or (device.type == "cpu" and torch.backends.mkldnn.is_available()
                                     and torch.ops.mkldnn._is_mkldnn_bf16_supported())


PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class Probabilities:
    """Per-pixel tumour probability of a volume at its original size.

    Attributes:
        mean: (slices, H, W) probability (the mean over test-time augmentations when they were used).
        std: (slices, H, W) standard deviation over the augmentations, or None without them.
    """

    mean: np.ndarray
    std: np.ndarray | None = None


class Segmenter:
    """A trained U-Net (or ensemble of U-Nets) with the preprocessing and post-processing stored beside its weights.

    Thread-safe for prediction: the network is in eval mode and never modified, so one instance can serve every
    session of the app at once.

    ``model`` is the network as trained (what the app's architecture view and feature maps show); the forward
    passes run ``folded_model``, a copy with each BatchNorm folded into its convolution (:func:`fold_batchnorm`).

    Args:
        model: the network (its weights already loaded).
        preprocessing: the parameters the network was trained with.
        postprocessing: default threshold and small-component removal.
        device: "auto", "cpu", "cuda" or a torch.device.
        batch_size: slices per forward pass.
        precision: "auto" computes in bfloat16 where the device does so natively (CUDA, CPUs with AVX512-BF16 or
            AMX, where it is about twice as fast) and in float32 elsewhere; "bf16" or "fp32" force one.
            bfloat16 keeps 8 bits of mantissa: probabilities move slightly, masks and Dice hardly at all (the
            README gives the measured difference).
    """

    def __init__(
        self,
        model: Segmentation,
        preprocessing: PreprocessingConfig = PreprocessingConfig(),
        postprocessing: PostprocessingConfig = PostprocessingConfig(),
        device: str | torch.device | None = "auto",
        batch_size: int = 16,
        precision: str = "auto",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device = resolve_device(device)
        self.bf16 = native_bf16(self.device) if precision == "auto" else precision == "bf16"
        self.preprocessor = Preprocessor(preprocessing)
        self.postprocessing = postprocessing
        self.batch_size = batch_size
        memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.memory_format = memory_format
        self.model = model.to(self.device, memory_format=memory_format).eval()
        self.folded_model = fold_batchnorm(self.model).to(memory_format=memory_format)

    @property
    def device_label(self) -> str:
        """The device and, when it is not float32, the number format: "CPU, bfloat16"."""
        device = f"GPU ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else "CPU"
        return f"{device}, bfloat16" if self.bf16 else device

    @torch.inference_mode()
    def predict_grid(self, grid: np.ndarray, tta: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities for preprocessed (S, C, G, G) model input; returns (mean, std or None) on the grid."""
        means, stds = [], []
        total = len(grid)
        for start in range(0, total, self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(grid[start : start + self.batch_size]))
            batch = batch.to(self.device).contiguous(memory_format=self.memory_format)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                views = [torch.sigmoid(self.folded_model(batch).float())]
                if tta:
                    views.append(torch.sigmoid(self.folded_model(batch.flip(-1)).float()).flip(-1))
            stacked = torch.stack(views)
            means.append(stacked.mean(0)[:, 0].cpu().numpy())
            if tta:
                stds.append(stacked.std(0, unbiased=False)[:, 0].cpu().numpy())
            if progress is not None:
                progress(min(start + self.batch_size, total), total)
        return np.concatenate(means), (np.concatenate(stds) if tta else None)

    def predict(self, pixels: np.ndarray, tta: bool = False,
                progress: Callable[[int, int], None] | None = None) -> Probabilities:
        """Tumour probability for every pixel of a (slices, H, W) or (H, W) array.

        Args:
            pixels: raw intensities in any scale (normalisation happens here).
            tta: also run the left-right mirrored image and return mean and standard deviation.
            progress: called with (slices done, slices total) after each batch.

        Returns:
            :class:`Probabilities` at the original size.
        """
        pixels = np.asarray(pixels, dtype=np.float32)
        if pixels.ndim == 2:
            pixels = pixels[None]
        if pixels.ndim != 3:
            raise ValueError(f"expected (slices, H, W) or (H, W) pixels, got shape {pixels.shape}")
        height, width = pixels.shape[1:]
        mean, std = self.predict_grid(self.preprocessor.volume_to_input(pixels), tta=tta, progress=progress)
        restore = self.preprocessor.grid_to_volume
        return Probabilities(
            np.clip(restore(mean, height, width), 0.0, 1.0),
            None if std is None else np.clip(restore(std, height, width), 0.0, None),
        )

    def segment(self, pixels: np.ndarray, threshold: float | None = None, tta: bool = False) -> np.ndarray:
        """Boolean tumour mask at the original size, post-processed with the stored settings."""
        probabilities = self.predict(pixels, tta=tta).mean
        return binarize(probabilities, self.postprocessing, threshold)
