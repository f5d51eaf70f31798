"""Turn a training run into the shipped weights folder (Hugging Face layout).

Steps, all on the run's own **validation** patients (never on anything kept aside): predict once, tune the
threshold and the small-component filter, evaluate with the tuned settings, then write ``config.json``
(with the tuned post-processing and validation metrics), ``model.safetensors``, ``training_log.csv``,
``evaluation.json`` and the model card ``README.md``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from mriseg.data.lgg import find_cases
from mriseg.evaluation.report import (
    calibration_text,
    interval_text,
    optional,
    predict_cases,
    site_text,
    summarize,
    tune_postprocessing,
    write_report,
)
from mriseg.inference import Segmenter
from mriseg.model import Segmentation
from mriseg.preprocessing import PreprocessingConfig
from mriseg.training.trainer import LOG_NAME
from mriseg.weights.bundle import (
    context_of,
    grid_of,
    kept_epoch,
    load_model,
    member_configs,
    normalization_of,
    read_config,
    recipe_of,
    save_bundle,
    shared_start,
    trained_preprocessing,
    training_stages,
)
from mriseg.weights.bundle import (
    member_origins as member_origins,  # moved to bundle (light for the app); still importable
)


def export_run(run_dir: str | Path, data_dir: str | Path, out_dir: str | Path, tta: bool = False,
               device: str = "auto", source: str = "best") -> dict:
    """Tune, evaluate and package ``<run_dir>/<source>`` into ``out_dir``; returns the validation report.

    Args:
        run_dir: the training run folder.
        data_dir: the data folder the run was trained on (its validation patients are read from it).
        out_dir: the weights folder to write.
        tta: tune and evaluate with mirror test-time augmentation.
        device: "auto", "cpu" or "cuda".
        source: the weights folder inside the run: ``best`` (the best epoch) or ``average`` (see
            :func:`mriseg.training.averaging.average_epochs`).
    """
    run_dir = Path(run_dir)
    model, config = load_model(run_dir / source)
    training_log = (run_dir / LOG_NAME).read_text()
    stopped = stopped_at_epoch(config, training_log)
    if stopped is not None:
        config = dict(config, stopped_at_epoch=stopped)
    return export_model(model, config, training_log, data_dir, out_dir, tta=tta, device=device)


def stopped_at_epoch(config: dict, training_log: str) -> int | None:
    r"""The last epoch of a run that stopped before its schedule's end (killed, out of time), else None.

    A warm restart's log opens with the history of its starting weights, and its own epochs follow theirs.

    Example:
        >>> log = "epoch,train_loss\n1,0.9\n2,0.7\n3,0.6\n"
        >>> stopped_at_epoch({"training": {"epochs": 5}}, log), stopped_at_epoch({"training": {"epochs": 3}}, log)
        (3, None)
    """
    epochs = [int(row["epoch"]) for row in csv.DictReader(io.StringIO(training_log))]
    schedule_end = kept_epoch(config.get("initialised_from") or {}) + config["training"]["epochs"]
    return epochs[-1] if epochs and epochs[-1] < schedule_end else None


def robustness_summary(report: dict) -> dict:
    """What the model card keeps of a report on a robustness copy of the validation patients."""
    return {"per_volume_dice_mean": report["per_volume_dice"]["mean"],
            "per_volume_dice_median": report["per_volume_dice"]["median"],
            "mean_ci95": report["per_volume_dice"]["mean_ci95"],
            "precision": report["precision"], "recall": report["recall"],
            "per_site": {site: row["mean"] for site, row in report["per_site"].items()},
            "patients": report["patients"]}


def export_model(model: Segmentation, config: dict, training_log: str, data_dir: str | Path, out_dir: str | Path,
                 tta: bool = False, device: str = "auto",
                 robustness_variants: tuple[str, ...] = ("skull-stripped", "brats-like")) -> dict:
    """Tune post-processing on the validation patients of ``config``'s split, evaluate, write the weights folder.

    Args:
        model: the trained U-Net or ensemble.
        config: its config (recipe, split, preprocessing ...), as read from a weights folder.
        training_log: the CSV text of its training history, shipped beside the weights.
        data_dir: the data folder holding the validation patients.
        out_dir: the weights folder to write.
        tta: tune and evaluate with mirror test-time augmentation.
        device: "auto", "cpu" or "cuda".
        robustness_variants: copies of the validation patients (:mod:`mriseg.evaluation.robustness`) also scored
            with the tuned post-processing, reported in ``evaluation.json`` and the model card; never used for
            tuning.

    Returns:
        The validation report (also written to ``evaluation.json``).
    """
    out_dir = Path(out_dir)
    validation = set(config["split"]["validation"])
    cases = [case for case in find_cases(data_dir) if case.name in validation]
    if len(cases) != len(validation):
        raise FileNotFoundError(f"{data_dir} lacks some of the model's validation patients")
    segmenter = Segmenter(model, PreprocessingConfig.from_dict(config["preprocessing"]), device=device)
    predictions = predict_cases(segmenter, cases, tta=tta)
    postprocessing, _ = tune_postprocessing(predictions)
    report = summarize(predictions, postprocessing)
    report.update(tta=tta, patients_seen_in_training=0,
                  subset="validation patients of the committed split (splits/lgg-flair.json)")
    report["robustness"] = {
        variant: robustness_summary(summarize(predict_cases(segmenter, cases, tta=tta, variant=variant),
                                              postprocessing))
        for variant in robustness_variants}

    extra = recipe_of(config)
    extra["tta_default"] = tta
    extra["validation_metrics"] = {
        "per_volume_dice_mean": report["per_volume_dice"]["mean"],
        "per_volume_dice_median": report["per_volume_dice"]["median"],
        "positive_slice_dice": report["positive_slice_dice"],
        "empty_slice_fp_rate": report["empty_slice_fp_rate"],
        "n_patients": report["n_patients"],
        "n_slices": report["n_slices"],
        "robustness": {variant: {key: value for key, value in summary.items() if key != "patients"}
                       for variant, summary in report["robustness"].items()},
    }
    save_bundle(out_dir, model.cpu(), segmenter.preprocessor.config, postprocessing, extra)
    (out_dir / LOG_NAME).write_text(training_log)
    write_report(report, out_dir / "evaluation.json")
    (out_dir / "README.md").write_text(model_card(read_config(out_dir), report))
    return report


def how_member_joined(member: dict, ensemble: dict) -> str:
    """What an ensemble does to a member's input that its training did not: widen it, shrink its grid, or pick
    its normalisation's channels."""
    notes = ""
    if member.get("widened_to_context"):
        notes += ", trained on single slices; in the ensemble its weights for the neighbouring slices are zero"
    trained = member.get("trained_preprocessing")
    grid = grid_of(trained)
    if grid < grid_of(ensemble["preprocessing"]):
        notes += f", trained on a {grid}x{grid} grid; the ensemble shrinks the input to that grid for it"
    normalization = normalization_of(trained)
    if normalization != normalization_of(ensemble["preprocessing"]):
        notes += f", trained on slices normalised by {normalization}"
    return notes


def model_card(config: dict, report: dict) -> str:
    """The Hugging Face model card, written from the config and the validation report."""
    members = member_configs(config)
    training = members[0]["training"]
    post = config["postprocessing"]
    dice = report["per_volume_dice"]
    n_train, n_validation = len(config["split"]["train"]), len(config["split"]["validation"])
    seeds = ", ".join(str(member["training"]["seed"]) for member in members)
    if len(members) == 1:
        stages = training_stages(config)
        stages_text, reproduce = describe_stages(stages), reproduce_commands(stages, config)
    else:
        histories = [training_stages(member) for member in members]
        texts, commands = [], []
        for number, (member, stages) in enumerate(zip(members, histories, strict=True), start=1):
            source, shared = shared_start(stages, histories[: number - 1])
            lines = describe_stages(stages).replace("  - ", "    - ").splitlines()
            if shared:
                lines[:shared] = [f"    - stage{'s' * (shared > 1)} 1{f'-{shared}' * (shared > 1)}: those of "
                                  f"U-Net {source} (the same weights)."]
            texts.append(f"  - U-Net {number} (seed {member['training']['seed']}{how_member_joined(member, config)}):\n"
                         + "\n".join(lines))
            # A member that branched off before another's last stage starts from that stage's weights.
            start = None
            if shared:
                whole = shared == len(histories[source - 1])
                start = f"runs/unet{source}/weights" if whole else f"runs/unet{source}-stage{shared}/weights"
            commands.append(reproduce_commands(stages[shared:], member, run=f"runs/unet{number}-stage",
                                               final_out=f"runs/unet{number}/weights", first_number=shared + 1,
                                               init=start))
        stages_text, reproduce = "\n".join(texts), "\n".join(commands)
        folders = " ".join(f"runs/unet{number}/weights" for number in range(1, len(members) + 1))
        reproduce += f"\npython -m mriseg ensemble --members {folders} --data ../shared/data/lgg-flair --out weights"
    strong_note = ("; stages marked *strong augmentation* also had gamma, blur and noise, rotation ±15° and scale "
                   "0.8-1.2" if "augmentation*" in stages_text else "")
    if "*MRI augmentation*" in stages_text:
        strong_note += ("; stages marked *MRI augmentation* had all of that and, with TorchIO, a random bias field "
                        "and anisotropic resampling (a thick-slice sagittal or coronal scan reformatted to axial), "
                        "and neighbouring slices drawn closer to the slice (thinner slices)")
    fill_note = (" holes the mask encloses on a slice filled (a dark core inside the abnormality counts as tumour, "
                 "as in the training masks);" if post.get("fill_holes") else "")
    return f"""---
license: cc-by-nc-sa-4.0
library_name: pytorch
tags: [medical-imaging, segmentation, mri, brain-tumor, unet, teaching]
pipeline_tag: image-segmentation
---

# mriseg U-Net: FLAIR abnormality of lower-grade glioma

A 2D U-Net that marks the FLAIR hyperintense abnormality of lower-grade glioma on axial brain MRI slices.
It powers the **mriseg** teaching app.

> **Intended use: teaching and research only. Not a medical device; never use it for diagnosis, treatment
> or any decision about a patient.**

## Model
{describe_architecture(config["architecture"])}
- Input: {describe_input(config['preprocessing'])}, each clipped to the
  {config['preprocessing']['clip_low']}-{config['preprocessing']['clip_high']} percentiles of the head, z-scored
  over the head {describe_normalization(config['preprocessing'])}, padded to a square and resized to
  {config['preprocessing']['grid_size']}x{config['preprocessing']['grid_size']}; probabilities are resized back to
  the original slice. All of this is stored in `config.json` and applied by `mriseg` itself, so any intensity scale
  (8-bit PNG, 16-bit DICOM, float NIfTI, a skull-stripped scan z-scored around a 0 background) gives the same
  input.
- Expected input: axial brain FLAIR, with or without the skull (DICOM and NIfTI volumes in other orientations are
  turned to axial first); other sequences, other body parts and colour images are outside what it knows.
- Output: tumour probability per pixel; default threshold **{post['threshold']:.2f}**;{fill_note} 2D connected
  components smaller than {post['min_component_fraction']:.2%} of the slice removed and, in volumes, 3D components
  smaller than {post['min_volume_fraction']:.0%} of the largest one removed (all three tuned on the validation
  patients).

## Training
- Data: LGG Segmentation Dataset (Kaggle `mateuszbuda/lgg-mri-segmentation`, TCGA-LGG via The Cancer Imaging
  Archive), 90 patients available to us; FLAIR channel only; manual masks approved by a board-certified
  radiologist. Cite Buda, Saha, Mazurowski, Computers in Biology and Medicine 109 (2019) and Mazurowski et al.,
  Journal of Neuro-Oncology (2017).
- Split by **patient**, stratified by scanner site: {n_train} training, {n_validation} validation patients
  (listed in `config.json`). No slice of a validation patient was used for training.
- Recipe: BCE + soft Dice loss, AdamW (cosine decay after a short warm-up, weight decay
  {training['weight_decay']}), batch {training['batch_size']}, half of the sampled slices with tumour;
  augmentation with torchvision.transforms.v2 applied jointly to image and mask (mirror, rotation ±10°,
  scale 0.9-1.1, shift, intensity jitter{strong_note}); seed {seeds}. Epochs and weights were chosen by validation
  per-volume Dice:
{stages_text}
- The per-epoch log of the whole history is `training_log.csv`.

## Results on the {report['n_patients']} validation patients ({report['n_slices']} slices)
Per-volume Dice is the headline: all slices of a patient stacked, one Dice per patient (as in Buda et al.
2019). Slice-averaged Dice would look better because most slices are empty.

| metric | value |
|---|---|
| per-volume Dice, mean | {dice['mean']:.3f} (95% interval {interval_text(report)}) |
| per-volume Dice, median | {dice['median']:.3f} |
| per-volume Dice, worst patient | {dice['min']:.3f} |
| Dice over slices with tumour | {optional(report['positive_slice_dice'], '.3f')} |
| slices with tumour where the mask touches it | {optional(report['positive_slice_detection_rate'], '.1%')} |
| slices without tumour given a false positive | {optional(report['empty_slice_fp_rate'], '.1%')} |
| IoU, per volume, mean | {report['iou']:.3f} |
| precision / recall, per volume, mean | {report['precision']:.3f} / {report['recall']:.3f} |
| HD95 (pixels, mean over patients with a prediction) | {optional(report['hd95_px'], '.1f')} |

By scanner site (per-volume Dice mean): {site_text(report)}.
{robustness_section(report)}
{calibration_note(report)}
The interval is a bootstrap over the {report['n_patients']} patients: where the mean could land on another draw of
as many patients. With this few, a difference of 0.01 between two models' means says little on its own;
`python -m mriseg compare-reports` pairs each patient with itself for a sharper test.
These validation patients also chose the epoch and the threshold, so the numbers are slightly optimistic;
20 further patients of the data set are kept aside for an independent evaluation. Published patient-level
results on this data set are 0.82-0.84 mean Dice. Full report: `evaluation.json`.

## Limitations
- FLAIR only, axial 2D slices; trained on 5 scanner sites of one public collection (TCGA-LGG). Other sites,
  sequences, pathologies or children were never seen. The robustness copies above are made from the same
  patients; real scans from elsewhere (other scanners, high-grade glioma with necrosis and enhancement) can do
  worse.
- Small lesions (a few hundred pixels) are segmented less reliably than large ones; slices at the top and
  bottom of the head produce most false positives.

## Reproduce
```
{reproduce}
python -m mriseg evaluate --data ../shared/data/lgg-flair --subset validation
```
"""


ROBUSTNESS_LABELS = {
    "skull-stripped": "skull-stripped copies (brain only, `mriseg.data.brain_extraction`)",
    "resampled": "resampled copies (1 mm-like pixels, three times as many slices)",
    "brats-like": "BraTS-like copies (stripped, resampled, brain z-scored on a 0 background)",
}


def robustness_section(report: dict) -> str:
    """The card's table of per-volume Dice on robustness copies of the validation patients, if scored."""
    variants = report.get("robustness") or {}
    if not variants:
        return ""
    dice = report["per_volume_dice"]
    hardest = report["per_site"].get("DU", {}).get("mean", 0.0)
    rows = [f"| original (skull on, as in training) | {dice['mean']:.3f} ({interval_text(report)}) | "
            f"{report['precision']:.3f} / {report['recall']:.3f} | {hardest:.3f} |"]
    for variant, summary in variants.items():
        low, high = summary["mean_ci95"]
        rows.append(f"| {ROBUSTNESS_LABELS.get(variant, variant)} | {summary['per_volume_dice_mean']:.3f} "
                    f"({low:.3f}-{high:.3f}) | {summary['precision']:.3f} / {summary['recall']:.3f} | "
                    f"{summary['per_site'].get('DU', 0):.3f} |")
    return ("\n### The same validation patients as other sources deliver scans\n"
            "Copies made by `python -m mriseg evaluate --variant ...` (`mriseg/evaluation/robustness.py`), scored "
            "with the same post-processing (never tuned on them):\n\n"
            "| copy | per-volume Dice mean (95% interval) | precision / recall | DU site (hardest) |\n"
            "|---|---|---|---|\n" + "\n".join(rows) + "\n")


def calibration_note(report: dict) -> str:
    """The card's sentence on what the probability map means."""
    text = calibration_text(report)
    if text is None:
        return "The model gave no pixel a probability of 0.1 or more on these patients."
    return f"What the probability map means: {text} (`evaluation.json`, `calibration`)."


def describe_normalization(preprocessing: dict) -> str:
    """Over which head the card's input is z-scored."""
    return {"slice": "(in that slice)",
            "volume": "(in all slices of the volume together, so a slice keeps its brightness within the scan)",
            "slice+volume": "(in that slice, and again in all slices of the volume together, as separate channels: "
                            "each U-Net gets the input it was trained on)"}[normalization_of(preprocessing)]


def describe_input(preprocessing: dict) -> str:
    context = context_of(preprocessing)
    if context == 0:
        return "one FLAIR slice"
    return (f"the FLAIR slice with {context} neighbouring slice{'s' * (context > 1)} above and below as extra "
            "channels (2.5D; at the ends of a volume, and for a lone 2D image, the slice stands in for missing "
            "neighbours)")


def describe_architecture(architecture: dict) -> str:
    """Markdown bullets for a U-Net's or an ensemble's architecture."""
    def unet(arch: dict) -> str:
        channels = ", ".join(str(arch["base_width"] * 2**level) for level in range(arch["depth"] + 1))
        return f"U-Net, {arch['depth']} down-sampling levels, base width {arch['base_width']} (channels {channels})"

    block = ("(Conv 3x3 + BatchNorm + ReLU) x2 per block, max-pool down, transposed-convolution up, skip "
             "connections, 1x1 conv to one logit.")
    if "members" not in architecture:
        return f"- {unet(architecture)}; {block}"
    lines = [f"- An ensemble of {len(architecture['members'])} U-Nets, each with its own training history (below); "
             "the tumour probability is the mean of theirs, so one network's miss can be caught by another:"]
    lines += [f"  - U-Net {number}: {unet(arch)}" for number, arch in enumerate(architecture["members"], start=1)]
    lines.append(f"- Each U-Net: {block}")
    return "\n".join(lines)


def describe_stages(stages: list[dict]) -> str:
    """One Markdown bullet per training stage, with the epochs it ran and the weights it kept."""
    lines, first_epoch = [], 1
    for number, stage in enumerate(stages, start=1):
        training = stage["training"]
        last_epoch = first_epoch + training["epochs"] - 1
        start = "from scratch" if number == 1 else f"warm restart from the weights of stage {number - 1}"
        added = context_of(trained_preprocessing(stage)) - context_of(trained_preprocessing(stages[number - 2]))
        if number > 1 and added > 0:
            start += f", widened to see {added} neighbouring slice{'s' * (added > 1)} on each side"
        grid = grid_of(trained_preprocessing(stage))
        if number > 1 and grid != grid_of(trained_preprocessing(stages[number - 2])):
            start += f", moved to the {grid}x{grid} grid"
        normalization = normalization_of(trained_preprocessing(stage))
        if number > 1 and normalization != normalization_of(trained_preprocessing(stages[number - 2])):
            start += f", moved to intensities normalised by {normalization}"
        if stage.get("averaged_epochs"):
            averaged = stage["averaged_epochs"]
            kept = (f"the weights of epochs {averaged[0]}-{averaged[-1]} averaged into one model (batch-norm "
                    "statistics measured again on training slices)")
        else:
            kept = f"best epoch {stage.get('best_epoch')}"
        recipe = {"strong": ", *strong augmentation*", "mri": ", *MRI augmentation*"}.get(
            training.get("augmentation"), "")
        if training.get("skull_strip"):
            recipe += (f", {training['skull_strip']:.0%} of the slices shown skull-stripped (epoch picked on the "
                       "validation patients and their skull-stripped copies together)")
        recall = training.get("recall_weight", 0.5)  # runs from before the option record none: soft Dice
        if recall != 0.5:
            recipe += f", Tversky loss with recall weight {recall} (missed tumour costs more than false alarms)"
        if training.get("dice_per_slice"):
            recipe += ", Dice term per slice with tumour (small tumour counts as much as large)"
        epochs = f"epochs {first_epoch}-{last_epoch}"
        if stage.get("stopped_at_epoch"):
            epochs = (f"epochs {first_epoch}-{stage['stopped_at_epoch']} of {training['epochs']} scheduled "
                      "(stopped there by a time limit)")
        device = " on a GPU" if stage.get("device_trained_on") == "cuda" else ""
        lines.append(f"  - stage {number}: {start}{device}, {epochs}, peak learning rate "
                     f"{training['learning_rate']}{recipe}; kept {kept}.")
        # the next stage starts from the kept weights, and its log continues after the epoch they come from
        first_epoch = kept_epoch(stage) + 1
    return "\n".join(lines)


def train_options(stage: dict, model: dict) -> str:
    """The ``train`` flags, beyond epochs and learning rate, that differ from the defaults for this stage."""
    training, arch = stage["training"], model["architecture"]
    preprocessing = trained_preprocessing(stage) or trained_preprocessing(model)
    options = [f"--{name} {value}" for name, value, default in (
        ("width", arch["base_width"], 16), ("depth", arch["depth"], 4), ("grid", preprocessing["grid_size"], 128),
        ("context", context_of(preprocessing), 0), ("normalize-over", normalization_of(preprocessing), "slice"),
        ("batch-size", training["batch_size"], 16), ("seed", training["seed"], 0),
        # runs from before the strong recipe existed record no augmentation
        ("augmentation", training.get("augmentation", "standard"), "standard"),
        ("recall-weight", training.get("recall_weight", 0.5), 0.5),
        ("skull-strip", training.get("skull_strip", 0.0), 0.0)) if value != default]
    if training.get("dice_per_slice"):
        options.append("--dice-per-slice")
    if stage.get("mixed_precision", "fp32") == "fp32":  # runs from before bf16 training record no precision
        options.append("--fp32")
    return "".join(f" {option}" for option in options)


def reproduce_commands(stages: list[dict], model: dict, data: str = "../shared/data/lgg-flair",
                       run: str = "runs/stage", final_out: str = "weights", first_number: int = 1,
                       init: str | None = None) -> str:
    """The CLI calls that rebuild these weights from the data, stage by stage.

    Args:
        stages: the training stages, oldest first (see :func:`training_stages`).
        model: the config holding their ``architecture`` and ``preprocessing``.
        data: the data folder named in the commands.
        run: run folders are named ``<run>1``, ``<run>2`` ...
        final_out: the weights folder the last stage is exported to.
        first_number: the number of the first stage given (later ones of a history that starts elsewhere).
        init: the weights folder the first stage given starts from, when it is a warm restart.
    """
    commands = []
    for number, stage in enumerate(stages, start=first_number):
        training, run_dir = stage["training"], f"{run}{number}"
        start = f"{run}{number - 1}/weights" if number > first_number else init
        commands.append(f"python -m mriseg train --data {data} --out {run_dir} --epochs {training['epochs']} "
                        f"--lr {training['learning_rate']}{train_options(stage, model)}"
                        + (f" --init {start}" if start else ""))
        source = ""
        if stage.get("averaged_epochs"):
            averaged = stage["averaged_epochs"]
            commands.append(f"python -m mriseg average --run {run_dir} --data {data} "
                            f"--epochs {averaged[0]}-{averaged[-1]}")
            source = " --source average"
        out = final_out if number == first_number + len(stages) - 1 else f"{run_dir}/weights"
        commands.append(f"python -m mriseg export --run {run_dir}{source} --data {data} --out {out}")
    return "\n".join(commands)
