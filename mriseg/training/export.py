"""Turn a training run into the shipped weights folder (Hugging Face layout).

Steps, all on the run's own **validation** patients (never on anything kept aside): predict once, tune the
threshold and the small-component filter, evaluate with the tuned settings, then write ``config.json``
(with the tuned post-processing and validation metrics), ``model.safetensors``, ``training_log.csv``,
``evaluation.json`` and the model card ``README.md``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from importlib import resources
from pathlib import Path
from string import Template

from mriseg.data.lgg import find_cases
from mriseg.evaluation.report import (
    DICE_COLUMN,
    FP_COLUMN,
    HD95_COLUMN,
    calibration_text,
    copies_rows,
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
from mriseg.postprocessing import PostprocessingConfig
from mriseg.preprocessing import PreprocessingConfig
from mriseg.training.trainer import LOG_NAME, TrainConfig
from mriseg.weights.bundle import (
    context_of,
    grid_of,
    kept_epoch,
    load_model,
    member_configs,
    model_version,
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

CARD_TEMPLATE = "card_template.md"  # in the mriseg.weights package


def export_run(run_dir: str | Path, data_dir: str | Path, out_dir: str | Path, tta: bool = False,
               device: str = "auto", source: str = "best", postprocessing_settings: dict | None = None) -> dict:
    """Tune, evaluate and package ``<run_dir>/<source>`` into ``out_dir``; returns the validation report.

    Args:
        run_dir: the training run folder.
        data_dir: the data folder the run was trained on (its validation patients are read from it).
        out_dir: the weights folder to write.
        tta: tune and evaluate with mirror test-time augmentation.
        device: "auto", "cpu" or "cuda".
        source: the weights folder inside the run: ``best`` (the best epoch) or ``average`` (see
            :func:`mriseg.training.averaging.average_epochs`).
        postprocessing_settings: post-processing fields that replace the tuned ones (see :func:`export_model`).
    """
    run_dir = Path(run_dir)
    model, config = load_model(run_dir / source)
    training_log = (run_dir / LOG_NAME).read_text()
    stopped = stopped_at_epoch(config, training_log)
    if stopped is not None:
        config = dict(config, stopped_at_epoch=stopped)
    return export_model(model, config, training_log, data_dir, out_dir, tta=tta, device=device,
                        postprocessing_settings=postprocessing_settings)


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
            "empty_slice_fp_rate": report["empty_slice_fp_rate"], "hd95_px": report["hd95_px"],
            "per_site": {site: row["mean"] for site, row in report["per_site"].items()},
            "patients": report["patients"]}


def export_model(model: Segmentation, config: dict, training_log: str, data_dir: str | Path, out_dir: str | Path,
                 tta: bool = False, device: str = "auto",
                 robustness_variants: tuple[str, ...] = ("skull-stripped", "resampled", "brats-like"),
                 postprocessing_settings: dict | None = None) -> dict:
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
        postprocessing_settings: post-processing fields set after tuning, replacing the tuned ones (a rule chosen
            by a paired comparison elsewhere, e.g. ``{"volume_score": "mass_x_slices"}``).

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
    postprocessing = replace(postprocessing, **(postprocessing_settings or {}))
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


def card_template() -> Template:
    """The model card's text with ``$name`` fields (``mriseg/weights/card_template.md``, shipped with the package)."""
    return Template(resources.files("mriseg.weights").joinpath(CARD_TEMPLATE).read_text(encoding="utf-8"))


def model_card(config: dict, report: dict) -> str:
    """The Hugging Face model card: :func:`card_template` filled in from the config and the validation report."""
    members = member_configs(config)
    training = members[0]["training"]
    preprocessing, post, dice = config["preprocessing"], config["postprocessing"], report["per_volume_dice"]
    stages, reproduce = training_history(config)
    return card_template().substitute(
        architecture=describe_architecture(config["architecture"]),
        input=describe_input(preprocessing), normalization=describe_normalization(preprocessing),
        clip_low=preprocessing["clip_low"], clip_high=preprocessing["clip_high"], grid=preprocessing["grid_size"],
        threshold=f"{post['threshold']:.2f}", fill_note=fill_note(post),
        min_component=f"{post['min_component_fraction']:.2%}", volume_filter=volume_filter_note(post),
        n_train=len(config["split"]["train"]), n_validation=len(config["split"]["validation"]),
        weight_decay=training["weight_decay"], batch_size=training["batch_size"],
        augmentation_note=augmentation_note(stages),
        seeds=", ".join(str(member["training"]["seed"]) for member in members),
        stages=stages, n_patients=report["n_patients"], n_slices=report["n_slices"],
        dice_mean=f"{dice['mean']:.3f}", dice_interval=interval_text(report), dice_median=f"{dice['median']:.3f}",
        dice_min=f"{dice['min']:.3f}", positive_slice_dice=optional(report["positive_slice_dice"], ".3f"),
        positive_slice_detection=optional(report["positive_slice_detection_rate"], ".1%"),
        empty_slice_false_positives=optional(report["empty_slice_fp_rate"], ".1%"),
        iou=f"{report['iou']:.3f}", precision=f"{report['precision']:.3f}", recall=f"{report['recall']:.3f}",
        hd95=optional(report["hd95_px"], ".1f"), sites=site_text(report), robustness=robustness_section(report),
        calibration=calibration_note(report), reproduce=reproduce, version=model_version(config))


def training_history(config: dict) -> tuple[str, str]:
    """The card's training stages (one bullet each; an ensemble's under each of its U-Nets) and the commands that
    reproduce the weights."""
    members = member_configs(config)
    if len(members) == 1:
        stages = training_stages(config)
        return describe_stages(stages), reproduce_commands(stages, config)
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
    folders = " ".join(f"runs/unet{number}/weights" for number in range(1, len(members) + 1))
    commands.append(f"python -m mriseg ensemble --members {folders} --data ../shared/data/lgg-flair --out weights")
    return "\n".join(texts), "\n".join(commands)


def augmentation_note(stages: str) -> str:
    """What the card's stages marked with a stronger augmentation (see :func:`describe_stages`) had beyond the
    standard one."""
    note = ("; stages marked *strong augmentation* also had gamma, blur and noise, rotation ±15° and scale "
            "0.8-1.2" if "augmentation*" in stages else "")
    if "*MRI augmentation*" in stages:
        note += ("; stages marked *MRI augmentation* had all of that and, with TorchIO, a random bias field "
                 "and anisotropic resampling (a thick-slice sagittal or coronal scan reformatted to axial), "
                 "and neighbouring slices drawn closer to the slice (thinner slices)")
    return note


def fill_note(postprocessing: dict) -> str:
    """The card's note on filled holes, when the post-processing fills them."""
    return (" holes the mask encloses on a slice filled (a dark core inside the abnormality counts as tumour, "
            "as in the training masks);" if postprocessing.get("fill_holes") else "")


def volume_filter_note(postprocessing: dict) -> str:
    """The card's words for the 3D filter of volumes (:class:`mriseg.postprocessing.PostprocessingConfig`).

    Example:
        >>> volume_filter_note({"min_volume_fraction": 0.2})
        '3D components smaller than 20% of the largest one removed (all three tuned on the validation patients)'
    """
    config = PostprocessingConfig.from_dict(postprocessing)
    if config.volume_score == "voxels":
        note = f"3D components smaller than {config.min_volume_fraction:.0%} of the largest one removed (all three " \
               "tuned on the validation patients)"
    else:
        note = (f"a 3D filter {config.volume_filter_rule()}, so a thin confident blob on a few slices weighs "
                "little against a tumour that extends across slices (threshold and speck filter tuned on the "
                "validation patients, this rule set by reasoning and paired on them and on the training patients: "
                "docs/experiments.md)")
    peak = postprocessing.get("min_peak_probability")
    if peak:
        note += f"; components whose highest probability stays under {peak:.2f} removed"
    if postprocessing.get("keep_attached_specks"):
        note += "; 2D specks touching a kept component kept"
    return note


ROBUSTNESS_LABELS = {
    "original": "original (skull on, as in training)",
    "skull-stripped": "skull-stripped copies (brain only, `mriseg.data.brain_extraction`)",
    "resampled": "resampled copies (1 mm-like pixels, three times as many slices)",
    "brats-like": "BraTS-like copies (stripped, resampled, brain z-scored on a 0 background)",
}


def robustness_section(report: dict) -> str:
    """The card's table of per-volume Dice on robustness copies of the validation patients, if scored."""
    if not report.get("robustness"):
        return ""
    rows = [f"| {row['copy']} | {row[DICE_COLUMN]} | {row['precision / recall']} | {row[FP_COLUMN]} / "
            f"{row[HD95_COLUMN]} | {row['DU site']} |" for row in copies_rows(report, ROBUSTNESS_LABELS)]
    return ("\n### The same validation patients as other sources deliver scans\n"
            "Copies made by `python -m mriseg evaluate --variant ...` (`mriseg/evaluation/robustness.py`), scored "
            "with the same post-processing (never tuned on them):\n\n"
            "| copy | per-volume Dice mean (95% interval) | precision / recall | false positives on empty slices / "
            "HD95 (px) | DU site (hardest) |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


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
        if training.get("teacher"):
            recipe += (f", distilled from the probabilities of `{Path(training['teacher']).name}` (weight "
                       f"{training['teacher_weight']}, computed on the slices with their skull)")
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
    """The ``train`` flags, beyond epochs and learning rate, that differ from the defaults for this stage.

    The defaults are the recipe's own (:class:`TrainConfig` and the :class:`UNetConfig` and
    :class:`PreprocessingConfig` in it), which the ``train`` command also falls back on.
    """
    training, arch = stage["training"], model["architecture"]
    preprocessing = trained_preprocessing(stage) or trained_preprocessing(model)
    default = TrainConfig()
    options = [f"--{name} {value}" for name, value, default_value in (
        ("width", arch["base_width"], default.architecture.base_width),
        ("depth", arch["depth"], default.architecture.depth),
        ("grid", preprocessing["grid_size"], default.preprocessing.grid_size),
        ("context", context_of(preprocessing), default.preprocessing.context_slices),
        ("normalize-over", normalization_of(preprocessing), default.preprocessing.normalize_over),
        ("batch-size", training["batch_size"], default.batch_size), ("seed", training["seed"], default.seed),
        # runs from before an option existed record none: they trained without it (standard augmentation, soft
        # Dice, no skull-stripped slices), whatever the default is now
        ("augmentation", training.get("augmentation", "standard"), default.augmentation),
        ("recall-weight", training.get("recall_weight", 0.5), default.recall_weight),
        ("skull-strip", training.get("skull_strip", 0.0), default.skull_strip)) if value != default_value]
    if training.get("dice_per_slice"):
        options.append("--dice-per-slice")
    if training.get("teacher"):
        options.append(f"--teacher {training['teacher']} --teacher-weight {training['teacher_weight']}")
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
        last = number == first_number + len(stages) - 1
        out = final_out if last else f"{run_dir}/weights"
        rule = chosen_postprocessing_options(model.get("postprocessing") or {}) if last else ""
        commands.append(f"python -m mriseg export --run {run_dir}{source} --data {data} --out {out}{rule}")
    return "\n".join(commands)


def chosen_postprocessing_options(postprocessing: dict) -> str:
    """The ``export --postprocessing`` options that set what tuning does not choose (the volume rules).

    Example:
        >>> chosen_postprocessing_options({"volume_score": "mass_x_slices", "min_volume_fraction": 0.117})
        ' --postprocessing volume_score=mass_x_slices --postprocessing min_volume_fraction=0.117'
        >>> chosen_postprocessing_options({"volume_score": "voxels", "min_volume_fraction": 0.2})
        ''
    """
    config = PostprocessingConfig.from_dict(postprocessing)
    if not config.judges_volumes:
        return ""
    default = PostprocessingConfig()
    chosen = {"volume_score": config.volume_score, "min_volume_fraction": config.min_volume_fraction}
    chosen.update({key: getattr(config, key) for key in ("min_peak_probability", "keep_attached_specks")
                   if getattr(config, key) != getattr(default, key)})
    return "".join(f" --postprocessing {key}={str(value).lower() if isinstance(value, bool) else value}"
                   for key, value in chosen.items())
