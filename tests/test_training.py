"""Training: loss goes down on real slices, checkpoints resume, the best epoch becomes a weights folder."""

import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import SAMPLES
from torchvision import tv_tensors

from mriseg.data.io import read_image_file, read_mask_file
from mriseg.data.lgg import find_cases
from mriseg.inference import native_bf16
from mriseg.model import UNetConfig, create_model
from mriseg.preprocessing import PreprocessingConfig, Preprocessor
from mriseg.training.trainer import (
    ContextJitter,
    MRIArtefacts,
    RandomGamma,
    SliceDataset,
    TrainConfig,
    bce_dice_loss,
    learning_rate_at,
    load_validation,
    train,
    training_augmentation,
)
from mriseg.weights.bundle import load_segmenter

pytestmark = pytest.mark.slow

CPU_HAS_BF16 = native_bf16(torch.device("cpu"))


def sample_tensors(slice_samples, grid=64):
    preprocessor = Preprocessor(PreprocessingConfig(grid_size=grid))
    images = np.stack([preprocessor.slice_to_grid(read_image_file(SAMPLES / e["image"])) for e in slice_samples])
    masks = np.stack([preprocessor.mask_to_grid(read_mask_file(SAMPLES / e["mask"])) for e in slice_samples])
    return images, masks


def tiny_run(slice_samples, tmp_path, epochs: int) -> tuple:
    """A split of four training and two validation sample patients, and a recipe that trains on them in seconds."""
    patients = sorted({e["patient"] for e in slice_samples})
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": patients[:4], "validation": patients[4:6]}))
    config = TrainConfig(epochs=epochs, batch_size=2, steps_per_epoch=2, warmup_steps=1,
                         architecture=UNetConfig(base_width=4, depth=2),
                         preprocessing=PreprocessingConfig(grid_size=64))
    return split, config


@pytest.mark.parametrize("bf16", [False, pytest.param(True, marks=pytest.mark.skipif(
    not CPU_HAS_BF16, reason="this CPU has no native bfloat16"))])
def test_tiny_unet_lowers_its_loss_on_real_slices(slice_samples, bf16):
    torch.manual_seed(0)
    images, masks = sample_tensors(slice_samples)
    x, y = torch.from_numpy(images)[:, None], torch.from_numpy(masks)[:, None]
    model = create_model(UNetConfig(base_width=8, depth=3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = bce_dice_loss(logits.float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


@pytest.mark.parametrize("strength", ["standard", "strong", "mri"])
def test_augmentation_moves_image_and_mask_together(slice_samples, strength):
    images, masks = sample_tensors(slice_samples[:1], grid=128)
    torch.manual_seed(3)
    random.seed(3)
    dataset = SliceDataset(images, (masks > 0.5).astype(np.float32), training_augmentation(strength))
    for _ in range(8):
        image, mask = dataset[0]
        assert image.shape == mask.shape == (1, 128, 128)
        assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
        # tumour is bright on FLAIR: the augmented mask must still cover bright pixels of the augmented image
        assert image[mask > 0].mean() > image[mask == 0].mean() + 0.5


def test_gamma_keeps_the_range_and_order_of_intensities():
    image = tv_tensors.Image(torch.linspace(-1.0, 4.0, 64).reshape(1, 8, 8))
    mask = tv_tensors.Mask(torch.ones(1, 8, 8))
    for _ in range(10):
        out, same_mask = RandomGamma(p=1.0)(image, mask)
        assert torch.allclose(out.amin(), image.amin()) and torch.allclose(out.amax(), image.amax())
        assert (out.flatten().diff() > 0).all()
        assert torch.equal(same_mask, mask)


def test_unknown_augmentation_is_named():
    with pytest.raises(ValueError, match="augmentation must be one of"):
        training_augmentation("heavy")


def test_loss_is_small_for_a_perfect_prediction():
    target = torch.zeros(1, 1, 32, 32)
    target[..., 8:20, 8:20] = 1
    perfect = (target * 2 - 1) * 20
    assert bce_dice_loss(perfect, target).item() < 0.01
    assert bce_dice_loss(-perfect, target).item() > 1.0


def test_recall_weight_makes_misses_cost_more_than_false_alarms():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    confident = (target * 2 - 1) * 20
    missed, false_alarm = confident.clone(), confident.clone()
    missed[..., 2, 2:6] = -20  # four tumour pixels missed
    false_alarm[..., 7, 0:4] = 20  # four healthy pixels marked
    # 0.5 is the soft Dice: (2 TP + 1) / (predicted + true + 1)
    probabilities = torch.sigmoid(missed)
    soft_dice = (2 * (probabilities * target).sum() + 1) / (probabilities.sum() + target.sum() + 1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(missed, target)
    assert bce_dice_loss(missed, target).item() == pytest.approx((bce + 1 - soft_dice).item())
    # favouring recall raises the price of the miss and lowers that of the false alarm
    assert bce_dice_loss(missed, target, 0.7) > bce_dice_loss(missed, target, 0.5)
    assert bce_dice_loss(false_alarm, target, 0.7) < bce_dice_loss(false_alarm, target, 0.5)
    assert bce_dice_loss(confident, target, 0.7).item() < 0.01  # a perfect prediction stays free


def test_dice_per_slice_counts_a_small_missed_tumour_as_much_as_a_large_found_one():
    target = torch.zeros(2, 1, 16, 16)
    target[0, :, 2:14, 2:14] = 1  # a large tumour, found
    target[1, :, 7:9, 7:9] = 1  # a small one (the top slice of a lesion), missed
    logits = (target * 2 - 1) * 20
    logits[1] = -20
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    # pooled over the batch the miss hardly shows (144 of 148 tumour pixels found); per slice it costs a whole slice
    assert bce_dice_loss(logits, target).item() - bce.item() < 0.02
    assert bce_dice_loss(logits, target, per_slice=True).item() - bce.item() == pytest.approx(0.5 * (1 - 1 / 5))
    # one slice alone: both ways agree; tumour-free slices add no Dice term per slice
    assert bce_dice_loss(logits[:1], target[:1], per_slice=True) == pytest.approx(bce_dice_loss(logits[:1], target[:1]))
    empty = torch.zeros(2, 1, 16, 16)
    assert bce_dice_loss(empty - 20, empty, per_slice=True).item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(empty - 20, empty).item())


def test_learning_rate_warms_up_then_decays():
    config = TrainConfig(learning_rate=1e-3, warmup_steps=10)
    assert learning_rate_at(0, 100, config) < learning_rate_at(9, 100, config) == 1e-3
    assert learning_rate_at(99, 100, config) < 2e-5


def test_train_checkpoints_resumes_and_ships_best(kaggle_folder, tmp_path, slice_samples):
    patients = sorted({e["patient"] for e in slice_samples})
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": patients[:6], "validation": patients[6:]}))
    config = TrainConfig(epochs=2, batch_size=4, steps_per_epoch=3, warmup_steps=2,
                         architecture=UNetConfig(base_width=4, depth=2),
                         preprocessing=PreprocessingConfig(grid_size=64))
    run = tmp_path / "run"
    state = train(kaggle_folder, run, split, config, device="cpu")
    assert state["epoch"] == 2
    log = (run / "training_log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,train_loss,val_dice_mean") and len(log) == 3

    longer = TrainConfig(**{**config.__dict__, "epochs": 3})
    state = train(kaggle_folder, run, split, longer, device="cpu", resume=True)
    assert state["epoch"] == 3
    assert len((run / "training_log.csv").read_text().splitlines()) == 4

    best = json.loads((run / "best" / "config.json").read_text())
    assert best["split"]["validation"] == patients[6:]
    assert best["preprocessing"]["grid_size"] == 64
    assert best["mixed_precision"] == ("bf16" if CPU_HAS_BF16 else "fp32")
    segmenter = load_segmenter(run / "best", device="cpu")
    assert segmenter.predict(np.ones((1, 80, 80), np.float32) * np.arange(80)).mean.shape == (1, 80, 80)


def test_time_budget_fits_the_epochs_and_resume_keeps_them(kaggle_folder, tmp_path, slice_samples):
    split, config = tiny_run(slice_samples, tmp_path, epochs=6)
    run = tmp_path / "run"
    # A spent budget still lets two epochs run (the second is the one timed), then ends the run there.
    state = train(kaggle_folder, run, split, config, device="cpu", time_budget=0.0, workers=1)
    assert state["epoch"] == state["fitted_epochs"] == 2
    assert len((run / "training_log.csv").read_text().splitlines()) == 3
    recorded = json.loads((run / "best" / "config.json").read_text())["training"]
    assert recorded["epochs"] == 2 and recorded["time_budget_s"] == 0.0
    state = train(kaggle_folder, run, split, config, device="cpu", resume=True)
    assert state["epoch"] == 2
    assert len((run / "training_log.csv").read_text().splitlines()) == 3


def test_warm_restart_from_a_weights_folder(kaggle_folder, tmp_path, slice_samples):
    split, config = tiny_run(slice_samples, tmp_path, epochs=1)
    first = tmp_path / "first" / "best"
    train(kaggle_folder, tmp_path / "first", split, config, device="cpu")
    state = train(kaggle_folder, tmp_path / "second", split, config, device="cpu", init_from=first)
    assert state["epoch"] == 1
    saved = json.loads((tmp_path / "second" / "best" / "config.json").read_text())
    assert saved["training"]["init_from"].endswith("best")
    fp32 = TrainConfig(**{**config.__dict__, "bf16": False})
    train(kaggle_folder, tmp_path / "fp32", split, fp32, device="cpu")
    assert json.loads((tmp_path / "fp32" / "best" / "config.json").read_text())["mixed_precision"] == "fp32"
    wider = TrainConfig(**{**config.__dict__, "architecture": UNetConfig(base_width=8, depth=2)})
    with pytest.raises(ValueError, match="another architecture"):
        train(kaggle_folder, tmp_path / "third", split, wider, device="cpu", init_from=first)
    # A restart may move to normalisation by the volume; the run's weights then say so.
    by_volume = TrainConfig(**{**config.__dict__, "preprocessing": replace(config.preprocessing,
                                                                           normalize_over="volume")})
    train(kaggle_folder, tmp_path / "by_volume", split, by_volume, device="cpu", init_from=first)
    moved = json.loads((tmp_path / "by_volume" / "best" / "config.json").read_text())
    assert moved["preprocessing"]["normalize_over"] == "volume"
    assert load_segmenter(tmp_path / "by_volume" / "best", device="cpu").preprocessor.config.normalize_over == "volume"


def test_context_jitter_reverses_neighbours_or_shows_the_slice_alone():
    image = tv_tensors.Image(torch.arange(3, dtype=torch.float32)[:, None, None].expand(3, 4, 4).clone())
    mask = tv_tensors.Mask(torch.ones(1, 4, 4))
    seen = set()
    for seed in range(40):
        random.seed(seed)
        out, out_mask = ContextJitter(lone=0.3)(image, mask)
        seen.add(tuple(out[:, 0, 0].tolist()))
        assert torch.equal(out_mask, mask)
    assert seen == {(0.0, 1.0, 2.0), (2.0, 1.0, 0.0), (1.0, 1.0, 1.0)}
    single = tv_tensors.Image(torch.zeros(1, 4, 4))
    assert ContextJitter(lone=1.0)(single).shape == (1, 4, 4)


def test_channels_must_match_the_context(kaggle_folder, tmp_path):
    config = TrainConfig(architecture=UNetConfig(base_width=4, depth=2),
                         preprocessing=PreprocessingConfig(grid_size=64, context_slices=1))
    with pytest.raises(ValueError, match="takes 1 input channels but the preprocessing makes 3"):
        train(kaggle_folder, tmp_path / "run", tmp_path / "split.json", config, device="cpu")


def test_mri_artefacts_change_the_image_smoothly_and_leave_the_mask():
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    image = tv_tensors.Image(((yy - 32) ** 2 + (xx - 32) ** 2 < 600).float()[None].repeat(3, 1, 1) * 100)
    mask = tv_tensors.Mask((image[:1] > 0).float())
    artefacts = MRIArtefacts(bias_field=1.0, anisotropy=0.0)
    biased, same_mask = artefacts(image, mask)
    assert torch.equal(same_mask, mask)
    assert biased.shape == image.shape and (biased[:, image[0] == 0] == 0).all()  # the background stays dark
    ratio = biased[0][image[0] > 0] / 100
    assert ratio.std() > 0.01  # an inhomogeneous field, the same on every channel (one acquisition)
    assert torch.allclose(biased[0], biased[2])
    blurred, _ = MRIArtefacts(bias_field=0.0, anisotropy=1.0)(image, mask)
    assert not torch.equal(blurred, image) and blurred.shape == image.shape


def test_thin_context_moves_neighbours_towards_the_slice():
    random.seed(0)
    image = tv_tensors.Image(torch.stack([torch.zeros(4, 4), torch.ones(4, 4), torch.full((4, 4), 2.0)]))
    jitter = ContextJitter(lone=0.0, thin=1.0)
    for _ in range(5):
        thinned = jitter(image)
        neighbours = sorted([float(thinned[0, 0, 0]), float(thinned[2, 0, 0])])
        assert float(thinned[1, 0, 0]) == 1.0
        assert 0.0 < neighbours[0] < 1.0 < neighbours[1] < 2.0 and sum(neighbours) == pytest.approx(2.0)


def test_skull_stripped_copies_are_drawn_and_scored(kaggle_folder, tmp_path, slice_samples):
    images = np.zeros((4, 8, 8), np.float32)
    stripped = np.ones((4, 8, 8), np.float32)
    masks = np.zeros((4, 8, 8), np.float32)
    random.seed(0)
    drawn = [float(SliceDataset(images, masks, None, stripped, 0.5)[0][0].mean()) for _ in range(200)]
    assert 0.35 < np.mean(drawn) < 0.65
    assert all(float(SliceDataset(images, masks, None, stripped, 0.0)[0][0].mean()) == 0.0 for _ in range(20))

    split, config = tiny_run(slice_samples, tmp_path, epochs=1)
    run = tmp_path / "stripped"
    train(kaggle_folder, run, split, replace(config, skull_strip=0.5), device="cpu")
    saved = json.loads((run / "best" / "config.json").read_text())
    assert saved["training"]["skull_strip"] == 0.5
    validation = load_validation(find_cases(kaggle_folder)[:2], skull_stripped=True)
    assert [name.endswith("(skull-stripped)") for name, _, _ in validation] == [False, False, True, True]


def test_a_teacher_is_learned_from_and_must_share_the_split(kaggle_folder, tmp_path, slice_samples):
    split, config = tiny_run(slice_samples, tmp_path, epochs=1)
    teacher = tmp_path / "teacher" / "best"
    train(kaggle_folder, tmp_path / "teacher", split, config, device="cpu")
    student = tmp_path / "student"
    train(kaggle_folder, student, split, replace(config, teacher=str(teacher), teacher_weight=0.7), device="cpu")
    saved = json.loads((student / "best" / "config.json").read_text())
    assert (saved["training"]["teacher"], saved["training"]["teacher_weight"]) == (str(teacher), 0.7)

    # the teacher's probabilities travel with the mask through the same geometric augmentation
    masks = np.zeros((1, 64, 64), np.float32)
    masks[0, 20:30, 10:20] = 1.0
    taught = masks * 0.8
    dataset = SliceDataset(np.random.rand(1, 64, 64).astype(np.float32), masks, training_augmentation("strong"),
                           teacher=taught)
    for _ in range(5):
        _, target = dataset[0]
        assert target.shape == (2, 64, 64)
        assert torch.equal(target[1] > 0, target[0] > 0)

    # a teacher that saw other validation patients would leak them into training
    other_split = tmp_path / "other_split.json"
    patients = json.loads(split.read_text())
    other_split.write_text(json.dumps({"train": patients["validation"] + patients["train"][2:],
                                       "validation": patients["train"][:2]}))
    with pytest.raises(ValueError, match="another patient split"):
        train(kaggle_folder, tmp_path / "leaky", other_split, replace(config, teacher=str(teacher)), device="cpu")


def test_hard_negatives_are_the_starting_weights_false_alarms(kaggle_folder, tmp_path, slice_samples, segmenter):
    from mriseg.data.brain_extraction import strip_skull
    from mriseg.data.lgg import find_cases
    from mriseg.postprocessing import PostprocessingConfig, binarize
    from mriseg.training.trainer import prepare_slices

    cases = find_cases(kaggle_folder)
    slices = prepare_slices(cases, Preprocessor(PreprocessingConfig(grid_size=64)), "slices", miner=segmenter)
    loaded = [case.load() for case in cases]
    tumour_free = np.concatenate([~mask.any(axis=(1, 2)) for _, mask in loaded])
    # the network's own alarms: threshold and speck filter, not the 3D filter that hides blobs from the mask
    alarms = PostprocessingConfig(threshold=segmenter.postprocessing.threshold,
                                  min_component_fraction=segmenter.postprocessing.min_component_fraction)
    marked = np.concatenate([binarize(segmenter.predict(volume).mean, alarms).any(axis=(1, 2))
                             for volume, _ in loaded])
    assert len(slices.false_alarms) == len(slices.masks) and tumour_free.any()
    np.testing.assert_array_equal(slices.false_alarms, marked & tumour_free)

    # a run that shows stripped slices mines the stripped copies too: their false alarms join the originals'
    with_stripped = prepare_slices(cases, Preprocessor(PreprocessingConfig(grid_size=64)), "slices",
                                   skull_stripped=True, miner=segmenter)
    marked_stripped = np.concatenate([
        binarize(segmenter.predict(strip_skull(volume, mask)[0]).mean, alarms).any(axis=(1, 2))
        for volume, mask in loaded])
    np.testing.assert_array_equal(with_stripped.false_alarms, (marked | marked_stripped) & tumour_free)

    split, config = tiny_run(slice_samples, tmp_path, epochs=1)
    first = tmp_path / "first" / "best"
    train(kaggle_folder, tmp_path / "first", split, config, device="cpu")
    boosted = replace(config, hard_negative_boost=4.0)
    train(kaggle_folder, tmp_path / "hard", split, boosted, device="cpu", init_from=first)
    saved = json.loads((tmp_path / "hard" / "best" / "config.json").read_text())
    assert saved["training"]["hard_negative_boost"] == 4.0
    with pytest.raises(ValueError, match="needs --init"):
        train(kaggle_folder, tmp_path / "no_init", split, boosted, device="cpu")


def test_balanced_sampling_gives_every_patient_the_same_share_of_tumour_draws(kaggle_folder, slice_samples):
    import shutil

    from mriseg.training.trainer import prepare_slices, sampling_weights

    # one patient gets a second tumour slice (another sample's, renamed), so the patients' tumour slices differ
    first, other = slice_samples[0], next(entry for entry in slice_samples[1:] if entry["tumour_pixels"])
    renamed = kaggle_folder / first["patient"] / f"{first['patient']}_{first['slice'] + 1}"
    for key, suffix in (("image", ".png"), ("mask", "_mask.png")):
        shutil.copy(SAMPLES / other[key], f"{renamed}{suffix}")
    cases = find_cases(kaggle_folder)
    slices = prepare_slices(cases, Preprocessor(PreprocessingConfig(grid_size=64)), "slices")
    lengths = [len(case.load()[1]) for case in cases]
    np.testing.assert_array_equal(slices.patients, np.repeat(np.arange(len(cases)), lengths))

    tumour = slices.masks.reshape(len(slices.masks), -1).max(axis=1) > 0
    tumour_slices = np.bincount(slices.patients[tumour], minlength=len(cases))
    assert len(set(tumour_slices[tumour_slices > 0])) > 1  # the samples differ, so balancing changes something
    for patients in (None, slices.patients):
        weights = sampling_weights(slices.masks, 0.5, patients=patients)
        assert weights.sum() == pytest.approx(1.0) and weights[tumour].sum() == pytest.approx(0.5)
        share = np.bincount(slices.patients[tumour], weights=weights[tumour], minlength=len(cases))
        balanced = np.allclose(share[tumour_slices > 0], 0.5 / np.count_nonzero(tumour_slices))
        assert balanced == (patients is not None)
