"""The Segmenter on the shipped weights: sizes, devices, TTA, threads, and that it finds real tumours."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from helpers import SAMPLES, WEIGHTS

from mriseg.data.io import read_mask_file, read_volume
from mriseg.inference import native_bf16, resolve_device
from mriseg.metrics import dice
from mriseg.weights.bundle import load_model, load_segmenter


def load_sample(entry):
    volume = read_volume((SAMPLES / entry["image"]).read_bytes(), entry["image"])
    return volume, read_mask_file(SAMPLES / entry["mask"])


@pytest.mark.parametrize("shape", [(256, 256), (181, 217), (3, 64, 96)])
def test_probabilities_come_back_at_the_original_size(segmenter, shape):
    pixels = np.random.default_rng(0).random(shape).astype(np.float32)
    result = segmenter.predict(pixels)
    expected = shape if len(shape) == 3 else (1, *shape)
    assert result.mean.shape == expected and result.std is None
    assert result.mean.min() >= 0.0 and result.mean.max() <= 1.0


@pytest.mark.slow
def test_tta_returns_mean_and_std(segmenter, slice_samples):
    volume, _ = load_sample(slice_samples[0])
    plain = segmenter.predict(volume.pixels)
    result = segmenter.predict(volume.pixels, tta=True)
    assert result.std.shape == result.mean.shape
    assert result.std.min() >= 0 and result.std.max() <= 0.5
    assert not np.allclose(result.mean, plain.mean)  # the mirrored view does contribute


@pytest.mark.slow
def test_uncertainty_is_zero_where_the_views_agree(segmenter, slice_samples):
    import torch

    volume, _ = load_sample(slice_samples[0])
    result = segmenter.predict(volume.pixels, tta=True)
    # The two views by hand, on the model grid: their population std is |a - b| / 2.
    grid = torch.from_numpy(segmenter.preprocessor.volume_to_input(volume.pixels))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=segmenter.bf16):
        network, layout = segmenter.folded_model, segmenter.memory_format
        plain = torch.sigmoid(network(grid.contiguous(memory_format=layout)))
        mirrored = torch.sigmoid(network(grid.flip(-1).contiguous(memory_format=layout)))
        plain, mirrored = plain.float(), mirrored.float()
    expected = (plain - mirrored.flip(-1)).abs()[:, 0].numpy() / 2
    _, std = segmenter.predict_grid(segmenter.preprocessor.volume_to_input(volume.pixels), tta=True)
    # In bfloat16 the two paths round the probabilities at different points (bf16 keeps ~3 significant digits).
    tolerance = 2e-3 if segmenter.bf16 else 1e-5
    np.testing.assert_allclose(std, expected, atol=tolerance)
    agree = expected < 1e-7
    assert agree.any() and np.all(std[agree] < tolerance)
    assert result.std.shape == volume.pixels.shape


@pytest.mark.slow
def test_progress_is_reported(segmenter):
    calls = []
    segmenter.predict(np.random.default_rng(0).random((20, 64, 64)).astype(np.float32),
                      progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (20, 20) and len(calls) == 2


@pytest.mark.slow
def test_many_threads_share_one_model(segmenter, slice_samples):
    volumes = [load_sample(entry)[0].pixels for entry in slice_samples]
    sequential = [segmenter.predict(v).mean for v in volumes]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda v: segmenter.predict(v).mean, volumes))
    for a, b in zip(sequential, parallel, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_finds_large_tumours_and_leaves_healthy_slices_nearly_empty(segmenter, slice_samples):
    for entry in slice_samples:
        volume, truth = load_sample(entry)
        mask = segmenter.segment(volume.pixels)[0]
        if entry["category"] == "large":
            assert dice(mask, truth) > 0.7, entry["image"]
        if entry["category"] == "tumour-free":
            assert mask.sum() < 100, entry["image"]


def test_cuda_request_without_gpu_is_explained():
    import torch

    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
    assert resolve_device("auto").type in {"cpu", "cuda"}


def test_precision_follows_the_hardware_and_can_be_forced(segmenter):
    import torch

    assert segmenter.bf16 == native_bf16(torch.device("cpu"))
    assert ("bfloat16" in segmenter.device_label) == segmenter.bf16
    forced = load_segmenter(WEIGHTS, device="cpu", precision="fp32")
    assert not forced.bf16 and forced.device_label == "CPU"
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32"):
        load_segmenter(WEIGHTS, device="cpu", precision="half")


@pytest.mark.slow
def test_bfloat16_gives_the_float32_masks(slice_samples):
    """bfloat16 rounds activations to 8 bits of mantissa: probabilities move a little, the masks must not."""
    fp32 = load_segmenter(WEIGHTS, device="cpu", precision="fp32")
    bf16 = load_segmenter(WEIGHTS, device="cpu", precision="bf16")
    for entry in slice_samples:
        volume, _ = load_sample(entry)
        exact, rounded = fp32.predict(volume.pixels).mean, bf16.predict(volume.pixels).mean
        assert np.abs(exact - rounded).mean() < 1e-3
        exact_mask, rounded_mask = fp32.segment(volume.pixels), bf16.segment(volume.pixels)
        if exact_mask.any():
            assert dice(exact_mask, rounded_mask) > 0.97, entry["image"]
        else:
            assert rounded_mask.sum() < 20, entry["image"]


@pytest.mark.slow
def test_folding_batchnorm_changes_the_speed_not_the_probabilities(slice_samples):
    """The forward passes run with BatchNorm folded into the convolutions: the probabilities must be the trained
    network's own, and the model the app shows (architecture, parameter count, feature-map hooks) untouched."""
    import torch

    trained, _ = load_model(WEIGHTS)
    segmenter = load_segmenter(WEIGHTS, device="cpu", precision="fp32")
    assert sum(p.numel() for p in segmenter.model.parameters()) == sum(p.numel() for p in trained.parameters())
    assert any(isinstance(layer, torch.nn.BatchNorm2d) for layer in segmenter.model.modules())
    volume, _ = load_sample(next(entry for entry in slice_samples if entry["category"] == "large"))
    grid = segmenter.preprocessor.volume_to_input(volume.pixels)
    with torch.inference_mode():
        expected = torch.sigmoid(trained.eval()(torch.from_numpy(grid)))[:, 0].numpy()
    folded, _ = segmenter.predict_grid(grid)
    assert expected.max() > 0.9  # a slice with tumour: the comparison covers confident pixels too
    np.testing.assert_allclose(folded, expected, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_gpu_and_cpu_masks_agree(segmenter, sample_volume):
    """The GPU (bfloat16 where it has it) draws the mask the CPU draws in float32, within a change of number format."""
    volume, _ = sample_volume
    gpu = load_segmenter(WEIGHTS, device="cuda")
    cpu = load_segmenter(WEIGHTS, device="cpu", precision="fp32")
    assert gpu.device.type == "cuda"
    assert dice(gpu.segment(volume), cpu.segment(volume)) >= 0.99
