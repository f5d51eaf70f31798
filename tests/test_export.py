"""From runs to the shipped folder: a two-stage history (train, warm restart, weight averaging) on real slices.

The model card and the training log must tell the whole history, and its reproduce commands must be the
ones that made the weights.
"""

import csv
import json

import numpy as np
import pytest
from helpers import WEIGHTS

from mriseg.cli import build_parser, main, train_config
from mriseg.model import UNetConfig
from mriseg.preprocessing import PreprocessingConfig
from mriseg.training.averaging import average_epochs
from mriseg.training.export import describe_stages, export_run, model_card, train_options
from mriseg.training.trainer import TrainConfig, train
from mriseg.weights.bundle import load_segmenter, read_config


def log_epochs(path) -> list[int]:
    with open(path, newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_train_restart_average_export(kaggle_folder, tmp_path, slice_samples, monkeypatch):
    patients = sorted({e["patient"] for e in slice_samples})
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": patients[:4], "validation": patients[4:6]}))
    tiny = dict(batch_size=2, steps_per_epoch=2, warmup_steps=1, architecture=UNetConfig(base_width=4, depth=2),
                preprocessing=PreprocessingConfig(grid_size=64))

    # Stage 1, exported from the command line as a weights folder: its log and its best epoch travel with it.
    # Without --out it lands beside the run, never over the shipped weights/ of the working directory.
    stage1 = tmp_path / "stage1"
    state = train(kaggle_folder, stage1, split, TrainConfig(epochs=3, learning_rate=1e-3, **tiny), device="cpu")
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--run", str(stage1), "--data", str(kaggle_folder), "--device", "cpu"]) == 0
    assert not (tmp_path / "weights").exists()
    best = state["best_epoch"]
    assert read_config(stage1 / "weights")["best_epoch"] == best

    # Stage 2 continues the history after the epoch it starts from (--resume with nothing to resume yet is a
    # fresh start, as a user restarting a cut-off job in a loop would run it).
    stage2 = tmp_path / "stage2"
    train(kaggle_folder, stage2, split, TrainConfig(epochs=3, learning_rate=5e-4, **tiny), device="cpu",
          init_from=stage1 / "weights", resume=True)
    assert log_epochs(stage2 / "training_log.csv") == [*range(1, best + 1), best + 1, best + 2, best + 3]
    assert sorted(path.name for path in (stage2 / "epochs").iterdir()) == [
        f"epoch_{epoch:03d}.safetensors" for epoch in (best + 1, best + 2, best + 3)]

    result = average_epochs(stage2, [best + 2, best + 3], kaggle_folder, device="cpu", batches=3, batch_size=2)
    assert 0.0 <= result["val_dice_mean"] <= 1.0
    report = export_run(stage2, kaggle_folder, tmp_path / "shipped", device="cpu", source="average")
    assert report["n_patients"] == 2

    shipped = read_config(tmp_path / "shipped")
    assert shipped["averaged_epochs"] == [best + 2, best + 3]
    assert shipped["initialised_from"]["best_epoch"] == best
    assert shipped["initialised_from"]["training"]["learning_rate"] == 1e-3
    assert log_epochs(tmp_path / "shipped" / "training_log.csv")[-1] == best + 3
    card = (tmp_path / "shipped" / "README.md").read_text()
    assert f"stage 1: from scratch, epochs 1-3, peak learning rate 0.001; kept best epoch {best}" in card
    assert f"epochs {best + 1}-{best + 3}" in card and f"epochs {best + 2}-{best + 3} averaged" in card
    assert f"--epochs {best + 2}-{best + 3}" in card and "--init runs/stage1/weights" in card
    assert "export --run runs/stage2 --source average" in card
    low, high = report["per_volume_dice"]["mean_ci95"]
    assert f"{report['per_volume_dice']['mean']:.3f} (95% interval {low:.3f}-{high:.3f})" in card
    assert "By scanner site (per-volume Dice mean): " in card and "What the probability map means: " in card
    segmenter = load_segmenter(tmp_path / "shipped", device="cpu")
    assert segmenter.postprocessing.threshold == report["threshold"]
    assert set(report["robustness"]) == {"skull-stripped", "resampled", "brats-like"}
    assert "BraTS-like copies" in card and "resampled copies" in card

    # A rule chosen elsewhere replaces the tuned 3D filter; the threshold stays tuned; the card says the rule.
    rule = {"volume_score": "mass_x_slices", "min_volume_fraction": 0.117}
    ruled = export_run(stage2, kaggle_folder, tmp_path / "ruled", device="cpu", source="average",
                       postprocessing_settings=rule)
    post = read_config(tmp_path / "ruled")["postprocessing"]
    assert {key: post[key] for key in rule} == rule and post["threshold"] == ruled["threshold"] == report["threshold"]
    assert load_segmenter(tmp_path / "ruled", device="cpu").postprocessing.volume_score == "mass_x_slices"
    card = (tmp_path / "ruled" / "README.md").read_text()
    assert "a 3D filter keeps only components whose summed probability times the slices they span is at least " \
           "11.7%" in card
    assert "--postprocessing volume_score=mass_x_slices --postprocessing min_volume_fraction=0.117" in card

    # A third stage from the averaged weights continues after the last averaged epoch.
    train(kaggle_folder, tmp_path / "stage3", split, TrainConfig(epochs=1, **tiny), device="cpu",
          init_from=tmp_path / "shipped")
    assert log_epochs(tmp_path / "stage3" / "training_log.csv")[-2:] == [best + 3, best + 4]

    # A weights folder trained on other patients must not start a run: its validation patients would leak.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"train": patients[2:6], "validation": patients[:2]}))
    with pytest.raises(ValueError, match="another patient split"):
        train(kaggle_folder, tmp_path / "leak", other, TrainConfig(epochs=1, **tiny), device="cpu",
              init_from=stage1 / "weights")
    with pytest.raises(FileNotFoundError, match="epoch_099"):
        average_epochs(stage2, [99], kaggle_folder, device="cpu")


@pytest.mark.parametrize(("text", "epochs"), [("55-58", [55, 56, 57, 58]), ("40,45,50", [40, 45, 50]),
                                              ("3,1-2", [1, 2, 3])])
def test_average_command_reads_epoch_ranges(text, epochs):
    args = build_parser().parse_args(["average", "--run", "r", "--data", "d", "--epochs", text])
    assert args.epochs == epochs


def test_ensemble_command_needs_an_out_folder(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ensemble", "--members", "a", "b", "--data", "d"])
    assert "--out" in capsys.readouterr().err


def test_average_command_rejects_a_bad_range(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["average", "--run", "r", "--data", "d", "--epochs", "late"])
    assert "not a list of epochs like 55-67" in capsys.readouterr().err


@pytest.mark.slow
def test_a_one_slice_model_warm_starts_a_2_5d_run(kaggle_folder, tmp_path, slice_samples):
    patients = sorted({e["patient"] for e in slice_samples})
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": patients[:4], "validation": patients[4:6]}))
    tiny = dict(batch_size=2, steps_per_epoch=2, warmup_steps=1)
    flat = TrainConfig(epochs=2, architecture=UNetConfig(base_width=4, depth=2),
                       preprocessing=PreprocessingConfig(grid_size=64), **tiny)
    train(kaggle_folder, tmp_path / "stage1", split, flat, device="cpu")
    export_run(tmp_path / "stage1", kaggle_folder, tmp_path / "stage1" / "weights", device="cpu")

    context = TrainConfig(epochs=2, architecture=UNetConfig(in_channels=3, base_width=4, depth=2),
                          preprocessing=PreprocessingConfig(grid_size=64, context_slices=1), augmentation="strong",
                          **tiny)
    train(kaggle_folder, tmp_path / "stage2", split, context, device="cpu", init_from=tmp_path / "stage1" / "weights")
    export_run(tmp_path / "stage2", kaggle_folder, tmp_path / "shipped", device="cpu")

    shipped = read_config(tmp_path / "shipped")
    assert shipped["preprocessing"]["context_slices"] == 1 and shipped["architecture"]["in_channels"] == 3
    assert shipped["initialised_from"]["preprocessing"].get("context_slices", 0) == 0
    card = (tmp_path / "shipped" / "README.md").read_text()
    assert "widened to see 1 neighbouring slice on each side" in card
    assert "the FLAIR slice with 1 neighbouring slice above and below" in card
    first, second = [line for line in card.splitlines() if line.startswith("python -m mriseg train")]
    assert "--context" not in first and "--context 1" in second
    assert "--augmentation" not in first and "--augmentation strong" in second
    assert "*strong augmentation*; kept" in card and "also had gamma, blur and noise" in card
    # A lone 2D image still gets a prediction (it is its own context) at its own size.
    segmenter = load_segmenter(tmp_path / "shipped", device="cpu")
    assert segmenter.predict(np.ones((70, 90), np.float32) * np.arange(90)).mean.shape == (1, 70, 90)

    # Back from 2.5D to one slice is not a warm restart.
    with pytest.raises(ValueError, match="another architecture"):
        train(kaggle_folder, tmp_path / "stage3", split, flat, device="cpu", init_from=tmp_path / "shipped")


@pytest.mark.slow
def test_a_warm_restart_moves_to_a_finer_grid(kaggle_folder, tmp_path, slice_samples):
    patients = sorted({e["patient"] for e in slice_samples})
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": patients[:4], "validation": patients[4:6]}))
    tiny = dict(batch_size=2, steps_per_epoch=2, warmup_steps=1, architecture=UNetConfig(base_width=4, depth=2))
    coarse = TrainConfig(epochs=2, preprocessing=PreprocessingConfig(grid_size=64), **tiny)
    train(kaggle_folder, tmp_path / "stage1", split, coarse, device="cpu")
    export_run(tmp_path / "stage1", kaggle_folder, tmp_path / "stage1" / "weights", device="cpu")

    fine = TrainConfig(epochs=2, preprocessing=PreprocessingConfig(grid_size=96), recall_weight=0.7,
                       dice_per_slice=True, **tiny)
    train(kaggle_folder, tmp_path / "stage2", split, fine, device="cpu", init_from=tmp_path / "stage1" / "weights")
    export_run(tmp_path / "stage2", kaggle_folder, tmp_path / "shipped", device="cpu")

    shipped = read_config(tmp_path / "shipped")
    assert shipped["preprocessing"]["grid_size"] == 96
    assert shipped["initialised_from"]["preprocessing"]["grid_size"] == 64
    card = (tmp_path / "shipped" / "README.md").read_text()
    assert "warm restart from the weights of stage 1, moved to the 96x96 grid" in card
    first, second = [line for line in card.splitlines() if line.startswith("python -m mriseg train")]
    assert "--grid 64" in first and "--grid 96" in second
    # the second stage also weighed missed tumour more, per slice: its card line and its command say so, not the first's
    assert "Tversky loss with recall weight 0.7" in card and card.count("recall weight") == 1
    assert "--recall-weight" not in first and "--recall-weight 0.7" in second
    assert card.count("Dice term per slice") == 1
    assert "--dice-per-slice" not in first and "--dice-per-slice" in second
    # both stages ran with the same precision, and each command says so
    assert ("--fp32" in first) == ("--fp32" in second)
    segmenter = load_segmenter(tmp_path / "shipped", device="cpu")
    assert segmenter.predict(np.ones((70, 90), np.float32) * np.arange(90)).mean.shape == (1, 70, 90)

    # Only the grid may change: other preprocessing would feed the filters another kind of input.
    recut = TrainConfig(epochs=1, preprocessing=PreprocessingConfig(grid_size=96, clip_high=98.0), **tiny)
    with pytest.raises(ValueError, match="other preprocessing"):
        train(kaggle_folder, tmp_path / "stage3", split, recut, device="cpu", init_from=tmp_path / "shipped")


def test_the_card_tells_a_stage_cut_off_by_a_time_limit_and_trained_on_a_gpu():
    scratch = {"training": {"epochs": 82, "learning_rate": 0.002}, "best_epoch": 63, "stopped_at_epoch": 66,
               "device_trained_on": "cuda"}
    restart = {"training": {"epochs": 20, "learning_rate": 0.0005}, "best_epoch": 79, "device_trained_on": "cpu"}
    lines = describe_stages([scratch, restart]).splitlines()
    assert lines[0] == ("  - stage 1: from scratch on a GPU, epochs 1-66 of 82 scheduled (stopped there by a "
                        "time limit), peak learning rate 0.002; kept best epoch 63.")
    assert lines[1].startswith("  - stage 2: warm restart from the weights of stage 1, epochs 64-83,")


def test_the_shipped_card_is_the_template_filled_in_from_the_shipped_config():
    report = json.loads((WEIGHTS / "evaluation.json").read_text())
    assert model_card(read_config(WEIGHTS), report) == (WEIGHTS / "README.md").read_text()


def parse_train(*flags: str) -> TrainConfig:
    return train_config(build_parser().parse_args(["train", "--data", "d", *flags]))


def test_train_command_defaults_are_the_recipe_defaults():
    assert parse_train() == TrainConfig()


RECIPE = TrainConfig(epochs=12, batch_size=8, learning_rate=5e-4, seed=3, bf16=False, augmentation="mri",
                     recall_weight=0.7, dice_per_slice=True, skull_strip=0.5,
                     architecture=UNetConfig(in_channels=3, base_width=32, depth=3),
                     preprocessing=PreprocessingConfig(grid_size=192, context_slices=1, normalize_over="volume"))


@pytest.mark.parametrize("recipe", [TrainConfig(), RECIPE])
def test_a_cards_train_command_makes_the_recipe_again(recipe):
    stage = {"training": recipe.to_dict(), "preprocessing": recipe.preprocessing.to_dict(),
             "mixed_precision": "bf16" if recipe.bf16 else "fp32"}
    options = train_options(stage, {"architecture": recipe.architecture.to_dict()})
    assert (options == "") == (recipe == TrainConfig())  # the defaults go without saying
    assert parse_train("--epochs", str(recipe.epochs), "--lr", str(recipe.learning_rate), *options.split()) == recipe
