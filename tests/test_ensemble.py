"""Ensembles: separately trained U-Nets on real slices, combined, tuned on validation and shipped as one folder."""

import csv
import json

import numpy as np
import pytest
from helpers import SAMPLES

from mriseg.cli import main
from mriseg.data.io import read_image_file, read_volume
from mriseg.errors import InputError
from mriseg.model import UNetConfig, UNetEnsemble
from mriseg.preprocessing import PreprocessingConfig
from mriseg.training.ensemble import combine, log_by_member
from mriseg.training.export import export_run, member_origins
from mriseg.training.trainer import TrainConfig, train
from mriseg.weights.bundle import fingerprint_of, load_segmenter, read_config

pytestmark = pytest.mark.slow

TINY = dict(batch_size=2, steps_per_epoch=2, warmup_steps=1, preprocessing=PreprocessingConfig(grid_size=64))


@pytest.fixture
def members(kaggle_folder, tmp_path, slice_samples):
    """Two exported members on one split: widths 4 and 6, seeds 0 and 1, two epochs each."""
    patients = sorted({e["patient"] for e in slice_samples})
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": patients[:4], "validation": patients[4:6]}))
    folders = []
    for number, (width, seed) in enumerate([(4, 0), (6, 1)], start=1):
        run = tmp_path / f"unet{number}"
        config = TrainConfig(epochs=2, seed=seed, architecture=UNetConfig(base_width=width, depth=2), **TINY)
        train(kaggle_folder, run, split, config, device="cpu")
        export_run(run, kaggle_folder, run / "weights", device="cpu")
        folders.append(run / "weights")
    return folders, split


def restarted_member(kaggle_folder, split, start, run, seed: int, preprocessing: PreprocessingConfig,
                     architecture: UNetConfig = UNetConfig(base_width=4, depth=2)):
    """A member warm-restarted from ``start`` with other preprocessing, trained two epochs and exported."""
    config = TrainConfig(epochs=2, seed=seed, architecture=architecture, **dict(TINY, preprocessing=preprocessing))
    train(kaggle_folder, run, split, config, device="cpu", init_from=start)
    export_run(run, kaggle_folder, run / "weights", device="cpu")
    return run / "weights"


def test_ensemble_command_ships_a_tuned_ensemble_with_both_histories(members, kaggle_folder, tmp_path,
                                                                     slice_samples):
    folders, _ = members
    out = tmp_path / "shipped"
    assert main(["ensemble", "--members", *map(str, folders), "--data", str(kaggle_folder), "--out", str(out),
                 "--device", "cpu"]) == 0

    config = read_config(out)
    assert [m["base_width"] for m in config["architecture"]["members"]] == [4, 6]
    assert [m["training"]["seed"] for m in config["members"]] == [0, 1]
    assert config["split"] == read_config(folders[0])["split"]
    assert config["validation_metrics"]["n_patients"] == 2
    assert member_origins(config) == [0, 0]  # both from random starts of their own

    with open(out / "training_log.csv", newline="") as handle:
        groups = log_by_member(list(csv.DictReader(handle)))
    assert {number: len(rows) for number, rows in groups.items()} == {1: 2, 2: 2}

    card = (out / "README.md").read_text()
    assert "An ensemble of 2 U-Nets" in card and "U-Net 2: U-Net, 2 down-sampling levels, base width 6" in card
    assert "--out runs/unet2-stage1 --epochs 2 --lr 0.002 --width 6 --depth 2 --grid 64 --batch-size 2 --seed 1" in card
    assert "export --run runs/unet2-stage1 --data ../shared/data/lgg-flair --out runs/unet2/weights" in card
    assert "ensemble --members runs/unet1/weights runs/unet2/weights" in card

    # The shipped folder predicts the mean of what its members predict, at the original resolution.
    image = read_image_file(SAMPLES / slice_samples[0]["image"])
    ensemble = load_segmenter(out, device="cpu")
    assert isinstance(ensemble.model, UNetEnsemble)
    expected = np.mean([load_segmenter(folder, device="cpu").predict(image).mean for folder in folders], axis=0)
    assert np.allclose(ensemble.predict(image).mean, expected, atol=1e-3)
    assert ensemble.postprocessing.threshold == json.loads((out / "evaluation.json").read_text())["threshold"]
    with pytest.raises(ValueError, match="already an ensemble"):
        combine([out, folders[0]])


def test_an_ensemble_cannot_start_a_warm_restart(members, kaggle_folder, tmp_path, capsys):
    folders, split = members
    out = tmp_path / "shipped"
    assert main(["ensemble", "--members", *map(str, folders), "--data", str(kaggle_folder), "--out", str(out),
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(kaggle_folder), "--out", str(tmp_path / "restart"), "--split", str(split),
                 "--init", str(out), "--epochs", "1", "--width", "4", "--depth", "2", "--grid", "64"]) == 2
    err = capsys.readouterr().err
    assert "is an ensemble" in err and f"mriseg members --weights {out} --out DIR" in err
    assert "preparing training slices" not in err  # refused before any slice was prepared


def test_members_from_another_split_are_refused(members, kaggle_folder, tmp_path, slice_samples, capsys):
    folders, split = members
    other = tmp_path / "other"
    config = read_config(folders[1])
    config["split"] = {"train": config["split"]["validation"], "validation": config["split"]["train"]}
    other.mkdir()
    for name in ("model.safetensors", "training_log.csv"):
        (other / name).write_bytes((folders[1] / name).read_bytes())
    (other / "config.json").write_text(json.dumps(config))
    assert main(["ensemble", "--members", str(folders[0]), str(other), "--data", str(kaggle_folder),
                 "--out", str(tmp_path / "x")]) == 2
    assert "another patient split" in capsys.readouterr().err


def test_members_must_be_exported_single_unets(members, tmp_path):
    folders, _ = members
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((folders[0] / name).read_bytes())
    with pytest.raises(InputError, match="export the run first"):
        combine([bare, folders[1]])
    with pytest.raises(ValueError, match="at least two"):
        combine([folders[0]])


def test_a_one_slice_member_joins_a_2_5d_member_widened(members, kaggle_folder, tmp_path, slice_samples):
    folders, split = members
    context_run = tmp_path / "context"
    restarted_member(kaggle_folder, split, folders[0], context_run, 2, PreprocessingConfig(grid_size=64,
                     context_slices=1), UNetConfig(in_channels=3, base_width=4, depth=2))

    model, config, _ = combine([folders[1], context_run / "weights"])
    assert config["preprocessing"]["context_slices"] == 1
    assert [m["widened_to_context"] for m in config["members"]] == [True, False]
    assert config["members"][0]["trained_preprocessing"].get("context_slices", 0) == 0

    # Widening is exact: the ensemble predicts the mean of the one-slice member and the 2.5D member.
    out = tmp_path / "shipped"
    assert main(["ensemble", "--members", str(folders[1]), str(context_run / "weights"), "--data",
                 str(kaggle_folder), "--out", str(out), "--device", "cpu"]) == 0
    volume = np.stack([read_image_file(SAMPLES / e["image"]) for e in slice_samples[:3]])
    expected = np.mean([load_segmenter(folder, device="cpu").predict(volume).mean
                        for folder in (folders[1], context_run / "weights")], axis=0)
    assert np.allclose(load_segmenter(out, device="cpu").predict(volume).mean, expected, atol=1e-3)
    card = (out / "README.md").read_text()
    assert "trained on single slices; in the ensemble its weights for the neighbouring slices are zero" in card
    commands = [line for line in card.splitlines() if line.startswith("python -m mriseg train")]
    assert "--context" not in commands[0]
    assert "--context 1 --batch-size 2 --seed 2 --init runs/unet2-stage1" in " ".join(commands)


def test_members_normalised_by_slice_and_by_volume_each_get_their_own_input(members, kaggle_folder, tmp_path,
                                                                          monkeypatch, slice_samples):
    folders, split = members
    volume_run = tmp_path / "by_volume"
    restarted_member(kaggle_folder, split, folders[0], volume_run, 4,
                     PreprocessingConfig(grid_size=64, normalize_over="volume"))

    out = tmp_path / "shipped"
    assert main(["ensemble", "--members", str(folders[1]), str(volume_run / "weights"), "--data",
                 str(kaggle_folder), "--out", str(out), "--device", "cpu"]) == 0
    config = read_config(out)
    assert config["preprocessing"]["normalize_over"] == "slice+volume"
    assert config["architecture"]["member_channels"] == [0, 1]
    card = (out / "README.md").read_text()
    assert "as separate channels: each U-Net gets the input it was trained on" in card
    assert "trained on slices normalised by volume" in card
    assert "moved to intensities normalised by volume" in card
    commands = [line for line in card.splitlines() if line.startswith("python -m mriseg train")]
    assert "--normalize-over volume" in commands[-1] and "--normalize-over" not in commands[0]

    # Each member sees exactly the input it was trained on: the ensemble predicts the mean of the two alone.
    volume = np.stack([read_image_file(SAMPLES / e["image"]) for e in slice_samples[:4]]) * np.linspace(
        0.6, 1.4, 4, dtype=np.float32)[:, None, None]  # slices of unequal brightness, where the two differ
    expected = np.mean([load_segmenter(folder, device="cpu").predict(volume).mean
                        for folder in (folders[1], volume_run / "weights")], axis=0)
    assert np.allclose(load_segmenter(out, device="cpu").predict(volume).mean, expected, atol=1e-3)

    # How it works says which member sees the scan normalised as a whole.
    from test_app import open_sample
    from test_app_classroom import serve_from_hub_cache

    from mriseg.app import webapp

    try:
        at = open_sample(serve_from_hub_cache(out, tmp_path, monkeypatch), slice_samples[0]["image"])
        at.switch_page("pages/how_it_works.py").run()
        assert not at.exception, at.exception
        assert not any("in the whole scan" in m.value for m in at.markdown)
        at.radio(key="ensemble_member").set_value(1).run()
        assert any("in the whole scan" in m.value for m in at.markdown)
    finally:
        webapp.load_model.clear()


def test_members_on_different_grids_each_see_their_own_scale(members, kaggle_folder, tmp_path, monkeypatch,
                                                            slice_samples):
    folders, split = members
    fine_run = tmp_path / "fine"
    restarted_member(kaggle_folder, split, folders[0], fine_run, 3, PreprocessingConfig(grid_size=96))

    out = tmp_path / "shipped"
    assert main(["ensemble", "--members", str(folders[0]), str(fine_run / "weights"), "--data", str(kaggle_folder),
                 "--out", str(out), "--device", "cpu"]) == 0
    config = read_config(out)
    assert config["preprocessing"]["grid_size"] == 96
    assert config["architecture"]["member_grids"] == [64, 96]
    card = (out / "README.md").read_text()
    assert "(seed 0, trained on a 64x64 grid; the ensemble shrinks the input to that grid for it)" in card
    # The fine member was warm-restarted from the coarse one: the card tells their shared stage once.
    assert "U-Net 2 (seed 3):\n    - stage 1: those of U-Net 1 (the same weights).\n    - stage 2: warm restart" in card
    commands = [line for line in card.splitlines() if line.startswith("python -m mriseg")]
    assert [line.split(" --out ")[1].split()[0] for line in commands[:4]] == [
        "runs/unet1-stage1", "runs/unet1/weights", "runs/unet2-stage2", "runs/unet2/weights"]
    assert commands[2].endswith("--grid 96 --batch-size 2 --seed 3 --init runs/unet1/weights")

    # Each member predicts close to what it predicts on its own, though its input is resampled on another path.
    volume = np.stack([read_image_file(SAMPLES / e["image"]) for e in slice_samples[:3]])
    alone = [load_segmenter(folder, device="cpu").predict(volume).mean for folder in (folders[0], fine_run / "weights")]
    together = load_segmenter(out, device="cpu").predict(volume).mean
    assert together.shape == volume.shape
    assert np.abs(together - np.mean(alone, axis=0)).mean() < 0.005

    # How it works draws the coarse member on its own grid and says why.
    from test_app import open_sample
    from test_app_classroom import serve_from_hub_cache

    from mriseg.app import webapp

    try:
        at = open_sample(serve_from_hub_cache(out, tmp_path, monkeypatch), slice_samples[0]["image"])
        at.switch_page("pages/how_it_works.py").run()
        assert not at.exception, at.exception
        assert any("trained on a coarser 64x64 grid" in m.value for m in at.markdown)
        assert at.dataframe[0].value["size"].iloc[-1] == "64x64"
        at.radio(key="ensemble_member").set_value(1).run()
        assert not any("coarser" in m.value for m in at.markdown)
        assert at.dataframe[0].value["size"].iloc[-1] == "96x96"
    finally:
        webapp.load_model.clear()

    # Any other preprocessing difference is still refused.
    other = tmp_path / "other"
    other.mkdir()
    for name in ("model.safetensors", "training_log.csv"):
        (other / name).write_bytes((folders[0] / name).read_bytes())
    changed = read_config(folders[0])
    changed["preprocessing"]["clip_high"] = 98.0
    changed["fingerprint_sha256"] = fingerprint_of(changed)  # as a re-export would: the check is not the point here
    (other / "config.json").write_text(json.dumps(changed))
    with pytest.raises(ValueError, match="must see the same kind of input"):
        combine([fine_run / "weights", other])


def test_the_app_shows_each_member_of_a_served_ensemble(members, kaggle_folder, tmp_path, monkeypatch,
                                                         slice_samples):
    from test_app import open_sample
    from test_app_classroom import serve_from_hub_cache

    from mriseg.app import webapp
    from mriseg.app.explain import describe
    from mriseg.model import unet_members

    folders, _ = members
    out = tmp_path / "shipped"
    assert main(["ensemble", "--members", *map(str, folders), "--data", str(kaggle_folder), "--out", str(out),
                 "--device", "cpu"]) == 0
    second = unet_members(load_segmenter(out, device="cpu").model)[1]
    try:
        at = open_sample(serve_from_hub_cache(out, tmp_path, monkeypatch), slice_samples[0]["image"])
        at.switch_page("pages/how_it_works.py").run()
        assert not at.exception, at.exception
        assert any("ensemble of 2 U-Nets" in m.value for m in at.markdown)
        at.radio(key="ensemble_member").set_value(1).run()
        assert list(at.dataframe[0].value["parameters"]) == [s.parameters for s in describe(second, 64)]
        assert any("**output**" in m.value or "merged output" in m.value for m in at.markdown)

        at.switch_page("pages/metrics.py").run()
        assert not at.exception, at.exception
        curves = next(chart for chart in at.get("plotly_chart") if "Training curves" in chart.proto.spec)
        kept = read_config(out)["members"][1]["best_epoch"]
        assert "U-Net 1: validation per-volume Dice" in curves.proto.spec
        assert f"U-Net 2: kept epoch {kept}" in curves.proto.spec
    finally:
        webapp.load_model.clear()


def test_members_command_takes_an_ensemble_apart_exactly(members, kaggle_folder, tmp_path):
    """Each U-Net of an ensemble comes back as a weights folder with the input it was trained on, its history and
    its log; together they predict what the ensemble predicts, and they combine into the same ensemble again."""
    shipped = tmp_path / "ensemble"
    assert main(["ensemble", "--members", *map(str, members[0]), "--data", str(kaggle_folder), "--out", str(shipped),
                 "--device", "cpu"]) == 0
    out = tmp_path / "members"
    assert main(["members", "--weights", str(shipped), "--out", str(out)]) == 0
    config = read_config(shipped)
    folders = [out / f"unet{number}" for number in range(1, len(config["members"]) + 1)]
    with open(shipped / "training_log.csv", newline="") as handle:
        shipped_rows = log_by_member(list(csv.DictReader(handle)))
    for number, (folder, member) in enumerate(zip(folders, config["members"], strict=True), start=1):
        own = read_config(folder)
        assert own["preprocessing"] == member["trained_preprocessing"]
        assert own["training"] == member["training"] and own["split"] == config["split"]
        assert own["architecture"]["in_channels"] == (1 if member["widened_to_context"] else
                                                      member["architecture"]["in_channels"])
        with open(folder / "training_log.csv", newline="") as handle:
            epochs = [row["epoch"] for row in csv.DictReader(handle)]
        assert epochs == [row["epoch"] for row in shipped_rows[number]]

    volume = read_volume((SAMPLES / "TCGA_CS_4942_19970222_volume.tif").read_bytes(), "volume.tif").pixels[8:14]
    expected = load_segmenter(shipped, device="cpu").predict(volume).mean
    each = [load_segmenter(folder, device="cpu").predict(volume).mean for folder in folders]
    assert np.allclose(np.mean(each, axis=0), expected, atol=1e-3)

    _, recombined, _ = combine(folders)
    assert recombined["preprocessing"] == config["preprocessing"]
    assert [m["widened_to_context"] for m in recombined["members"]] == [m["widened_to_context"]
                                                                         for m in config["members"]]
    assert main(["members", "--weights", str(folders[0]), "--out", str(tmp_path / "again")]) == 2  # one U-Net

