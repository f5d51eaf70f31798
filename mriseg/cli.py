"""Command line: ``python -m mriseg <command> ...``; ``python -m mriseg <command> --help`` lists a command's options."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from mriseg.config import DEFAULT_SPLIT
from mriseg.errors import InputError

if TYPE_CHECKING:
    from mriseg.training.trainer import TrainConfig


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The recipe the ``train`` flags ask for.

    A flag left out parses as None and the recipe keeps its dataclass's default: :class:`TrainConfig`,
    :class:`UNetConfig` and :class:`PreprocessingConfig` are the one home of each default (the parser names none, so
    building it imports neither torch nor OpenCV).
    """
    from mriseg.model import UNetConfig
    from mriseg.preprocessing import PreprocessingConfig
    from mriseg.training.trainer import TrainConfig

    def given(**values) -> dict:
        return {name: value for name, value in values.items() if value is not None}

    preprocessing = PreprocessingConfig(**given(grid_size=args.grid, context_slices=args.context,
                                                normalize_over=args.normalize_over))
    architecture = UNetConfig(in_channels=1 + 2 * preprocessing.context_slices,
                              **given(base_width=args.width, depth=args.depth))
    return TrainConfig(architecture=architecture, preprocessing=preprocessing, **given(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, steps_per_epoch=args.steps_per_epoch,
        seed=args.seed, bf16=False if args.fp32 else None, augmentation=args.augmentation,
        recall_weight=args.recall_weight, dice_per_slice=args.dice_per_slice, skull_strip=args.skull_strip,
        teacher=args.teacher, teacher_weight=args.teacher_weight, hard_negative_boost=args.hard_negative_boost,
        balance_patients=args.balance_patients))


def _train(args: argparse.Namespace) -> int:
    from mriseg.training.trainer import train

    config = train_config(args)
    state = train(args.data, args.out, args.split, config, device=args.device, resume=args.resume,
                  max_patients=args.max_patients, init_from=args.init,
                  time_budget=None if args.minutes is None else 60 * args.minutes, workers=args.workers)
    print(f"done: {state['epoch']} epochs, best validation per-volume Dice {state['best_dice']:.4f} "
          f"(epoch {state['best_epoch']}); weights folder: {Path(args.out) / 'best'}")
    return 0


def _segmenter(args: argparse.Namespace):
    """The segmenter, its weights' config, and whether to mirror (``--tta``, or weights exported with it)."""
    from mriseg.weights.bundle import load_segmenter, read_config
    from mriseg.weights.hub import resolve_weights

    folder = Path(args.weights) if args.weights else resolve_weights().folder
    segmenter = load_segmenter(folder, device=args.device, precision="fp32" if args.fp32 else "auto")
    config = read_config(folder)
    print(f"model: {folder}  device: {segmenter.device_label}", file=sys.stderr)
    overrides = dict(getattr(args, "postprocessing", None) or [])
    if overrides:
        segmenter.postprocessing = replace(segmenter.postprocessing, **overrides)
        print(f"post-processing: {segmenter.postprocessing}", file=sys.stderr)
    # A model exported with --tta was tuned and scored with it, so it is used with it.
    return segmenter, config, args.tta or bool(config.get("tta_default"))


def _compare_reports(args: argparse.Namespace) -> int:
    from mriseg.evaluation.report import compare_reports, format_comparison

    reports = []
    for path in (args.baseline, args.candidate):
        if not Path(path).is_file():
            raise FileNotFoundError(f"no report at {path}: write one with `python -m mriseg evaluate --out`")
        try:
            reports.append(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not an evaluation report (JSON): {error}") from error
        if not isinstance(reports[-1], dict) or not isinstance(reports[-1].get("patients"), dict):
            raise ValueError(f"{path} has no per-patient Dice: write it with `python -m mriseg evaluate --out`")
    print(format_comparison(compare_reports(*reports)))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mriseg.data.lgg import load_split
    from mriseg.evaluation.report import evaluate, format_report, write_report

    segmenter, config, tta = _segmenter(args)
    patients = load_split(args.split)[args.subset] if args.subset else None
    report = evaluate(args.data, segmenter, patients=patients, tta=tta, variant=args.variant)
    trained_on = set(config.get("split", {}).get("train", []))
    seen = sorted(trained_on & set(report["patients"]))
    if seen:
        print(f"warning: {len(seen)} of these patients were used to train this model; their scores are "
              "optimistic. Use --split/--subset validation or patients the model never saw.", file=sys.stderr)
    report["patients_seen_in_training"] = len(seen)
    print(format_report(report))
    if args.out:
        write_report(report, args.out)
        print(f"report written to {args.out}")
    return 0


def _errors(args: argparse.Namespace) -> int:
    from mriseg.data.lgg import load_split
    from mriseg.evaluation.errors import find_errors, format_errors
    from mriseg.evaluation.report import write_report

    segmenter, _, tta = _segmenter(args)
    patients = load_split(args.split)[args.subset] if args.subset else None
    errors = find_errors(args.data, segmenter, patients=patients, tta=tta, variant=args.variant)
    print(format_errors(errors))
    if args.out:
        write_report(errors, args.out)
        print(f"error list written to {args.out}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from mriseg.batch import ModelSettings, cached_segmenter, dask_client, run_batch
    from mriseg.weights.bundle import read_config
    from mriseg.weights.hub import resolve_weights

    folder = Path(args.weights) if args.weights else resolve_weights().folder
    config = read_config(folder)
    settings = ModelSettings(
        weights=str(folder), sha256=config.get("weights_sha256") or None, threshold=args.threshold,
        # A model exported with --tta was tuned and scored with it, so it is used with it.
        tta=args.tta or bool(config.get("tta_default")), device=args.device,
        precision="fp32" if args.fp32 else "auto")
    run = {"settings": settings, "overwrite": args.overwrite, "progress": not args.no_progress}
    if args.scheduler or args.workers:
        with dask_client(scheduler=args.scheduler, workers=args.workers) as client:
            workers = len(client.scheduler_info().get("workers", {}))
            print(f"model: {folder}  Dask scheduler: {client.scheduler.address} ({workers} workers now)",
                  file=sys.stderr)
            report = run_batch(args.files, args.out, client=client, **run)
    else:
        segmenter = cached_segmenter(folder, sha256=settings.sha256, device=settings.device,
                                     precision=settings.precision)
        print(f"model: {folder}  device: {segmenter.device_label}", file=sys.stderr)
        report = run_batch(args.files, args.out, **run)
    print(f"{report.cases} case(s): {report.ok} segmented, {report.resumed} already done, {report.failed} failed"
          + (f"; {report.skipped} file(s) skipped as no scan" if report.skipped else "")
          + (f"; summary: {report.summary}" if report.summary else ""))
    if report.failed:
        # Not an "error:" line: those are one per failed case, and scripts count them.
        print(f"{report.failed} case(s) failed" + (f", listed in {report.summary}" if report.summary else ""),
              file=sys.stderr)
        return 1
    return 0


def _serve(args: argparse.Namespace) -> int:
    from mriseg.app.serve import serve

    return serve(args.streamlit_options, device=args.device)


def _bench(args: argparse.Namespace) -> int:
    import torch

    from mriseg.evaluation.benchmark import benchmark
    from mriseg.inference import native_bf16
    from mriseg.weights.bundle import load_segmenter
    from mriseg.weights.hub import resolve_weights

    folder = Path(args.weights) if args.weights else resolve_weights().folder
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        # On a CPU with native bfloat16 the float32 row stays, to show what the faster number format buys.
        precisions = ["fp32", "bf16"] if device == "cpu" and native_bf16(torch.device("cpu")) else ["auto"]
        for precision in precisions:
            segmenter = load_segmenter(folder, device=device, precision=precision)
            result = benchmark(segmenter, volume_slices=args.slices, repeats=args.repeats)
            print(f"{result['device']:24s} latency per {result['slice_size']}x{result['slice_size']} slice "
                  f"(median of {args.repeats}): {result['latency_ms_per_slice']:.1f} ms   "
                  f"volume of {result['volume_slices']} slices: {result['volume_slices_per_second']:.1f} slices/s"
                  + (f"   ({result['threads']} CPU threads)" if device == "cpu" else ""))
    if len(devices) == 1:
        print("no CUDA GPU here: GPU latency not measured")
    return 0


def recall_weight(text: str) -> float:
    """``--recall-weight``: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{value} is outside (0, 1): 0.5 is the soft Dice, 0.7 favours recall")
    return value


def fraction(text: str) -> float:
    """A share between 0 and 1 (argparse type)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def non_negative(kind: type[int] | type[float]):
    """An argparse type: a number of ``kind`` that is 0 or more (``--workers``, ``--minutes``)."""
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{value} is negative")
        return value
    return parse


def postprocessing_setting(text: str) -> tuple[str, object]:
    """``--postprocessing KEY=VALUE``: one field of the post-processing, typed as the field is.

    Example:
        >>> postprocessing_setting("volume_score=mass_x_slices"), postprocessing_setting("fill_holes=no")
        (('volume_score', 'mass_x_slices'), ('fill_holes', False))
    """
    from mriseg.postprocessing import PostprocessingConfig

    key, _, value = text.partition("=")
    defaults = PostprocessingConfig().to_dict()
    if key not in defaults or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE with KEY one of {', '.join(defaults)}")
    default = defaults[key]
    if isinstance(default, bool):
        if value.lower() not in ("true", "yes", "1", "false", "no", "0"):
            raise argparse.ArgumentTypeError(f"{key} is true or false, not {value!r}")
        return key, value.lower() in ("true", "yes", "1")
    try:
        return key, type(default)(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key} needs a {type(default).__name__}, not {value!r}") from None


def epoch_list(text: str) -> list[int]:
    """``"55-67"`` or ``"40,45,50"`` (or a mix) as a sorted list of epoch numbers."""
    epochs: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            epochs.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of epochs like 55-67 or 40,45,50") from None
    if not epochs:
        raise argparse.ArgumentTypeError(f"{text!r} names no epoch")
    return sorted(epochs)


def _average(args: argparse.Namespace) -> int:
    from mriseg.training.averaging import average_epochs

    result = average_epochs(args.run, args.epochs, args.data, out_dir=args.out, device=args.device)
    print(f"epochs {result['epochs'][0]}-{result['epochs'][-1]} averaged ({len(result['epochs'])}): validation "
          f"per-volume Dice at 0.5 mean {result['val_dice_mean']:.4f}, median {result['val_dice_median']:.4f} "
          f"-> {result['folder']}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from mriseg.evaluation.report import format_report
    from mriseg.training.export import export_run

    # Written beside the run unless --out says otherwise: shipping a model over weights/ is a deliberate step.
    out = args.out or Path(args.run) / "weights"
    report = export_run(args.run, args.data, out, tta=args.tta, device=args.device, source=args.source,
                        postprocessing_settings=dict(args.postprocessing or []))
    print(format_report(report))
    print(f"weights folder written: {out}")
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    from mriseg.evaluation.report import format_report
    from mriseg.training.ensemble import build_ensemble

    report = build_ensemble(args.members, args.data, args.out, tta=args.tta, device=args.device)
    print(format_report(report))
    print(f"ensemble of {len(args.members)} U-Nets written to {args.out}")
    return 0


def _members(args: argparse.Namespace) -> int:
    from mriseg.training.ensemble import split_members

    for folder in split_members(args.weights, args.out):
        print(f"U-Net written to {folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mriseg.evaluation.robustness import VARIANTS

    parser = argparse.ArgumentParser(
        prog="python -m mriseg",
        description="Brain tumour (LGG FLAIR) segmentation: train, evaluate and ship the U-Net, segment files. "
                    "For teaching and research, never diagnosis.",
        epilog="python -m mriseg <command> --help lists a command's options.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train the U-Net on a folder in the Kaggle LGG layout")
    train.add_argument("--data", required=True, help="folder of patient folders (Kaggle LGG layout)")
    train.add_argument("--out", default="runs/unet", help="run folder: checkpoint, log, best/ weights")
    train.add_argument("--split", default=str(DEFAULT_SPLIT), help="patient split JSON (train/validation)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--steps-per-epoch", type=int, help="0: one pass over the training slices")
    train.add_argument("--width", type=int, help="channels of the first U-Net level")
    train.add_argument("--depth", type=int, help="number of down-sampling steps")
    train.add_argument("--grid", type=int, help="side of the square grid the model sees")
    train.add_argument("--context", type=int,
                       help="neighbouring slices on each side fed as extra input channels (2.5D); 0: the slice alone")
    train.add_argument("--normalize-over", choices=("slice", "volume"),
                       help="z-score intensities over each slice's head, or over the head in the whole volume")
    train.add_argument("--seed", type=int)
    train.add_argument("--device", default="auto", help="auto, cpu or cuda")
    train.add_argument("--fp32", action="store_true",
                       help="train in float32 (default: bfloat16 autocast on CUDA and on CPUs with native bf16)")
    train.add_argument("--augmentation", choices=("standard", "strong", "mri"),
                       help="strong: also gamma, blur, noise and wider rotation/scale; mri: strong plus bias field, "
                            "anisotropic resampling and thinner slices (TorchIO)")
    train.add_argument("--skull-strip", type=fraction,
                       help="share of training slices shown skull-stripped (brain only); above 0 the epoch is also "
                            "picked on skull-stripped copies of the validation patients")
    train.add_argument("--teacher", help="weights folder (U-Net or ensemble) whose probabilities on the training "
                                         "slices the network also learns to match (distillation)")
    train.add_argument("--teacher-weight", type=float,
                       help="weight of the cross-entropy against the teacher's probabilities")
    train.add_argument("--hard-negative-boost", type=float,
                       help="with --init: tumour-free slices the starting weights mark are drawn this many times as "
                            "often as the other tumour-free slices (1: off)")
    train.add_argument("--balance-patients", action="store_true", default=None,
                       help="draw every patient's tumour slices as often in all as any other patient's (default: "
                            "every tumour slice alike, so large tumours fill most batches)")
    train.add_argument("--recall-weight", type=recall_weight,
                       help="weight of missed tumour against false alarms in the overlap loss (Tversky); "
                            "0.5: soft Dice, higher: favour recall")
    train.add_argument("--dice-per-slice", action="store_true", default=None,
                       help="Dice term on each slice with tumour, averaged (default: over the whole batch), so the "
                            "small tumour at a lesion's edges counts as much as its large middle")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    train.add_argument("--init", default=None,
                       help="start from this weights folder (e.g. weights/) with a fresh schedule: a warm restart")
    train.add_argument("--max-patients", type=int, default=None, help="use only N patients a side (smoke tests)")
    train.add_argument("--minutes", type=non_negative(float), default=None,
                       help="time budget for the run: from epoch 2 on, the epoch count shrinks to what fits at the "
                            "recent pace, so the learning-rate schedule still ends at its low (a GPU lent for a "
                            "fixed time)")
    train.add_argument("--workers", type=non_negative(int), default=0,
                       help="data-loading worker processes (0: augment in the training process; on a GPU, 2-4 keep "
                            "it fed)")
    train.set_defaults(handler=_train)

    average = commands.add_parser("average", help="average the weights of several epochs of a run into one model")
    average.add_argument("--run", required=True, help="training run folder (with epochs/ and best/)")
    average.add_argument("--data", required=True, help="the data folder the run was trained on")
    average.add_argument("--epochs", required=True, type=epoch_list, help="epochs to average: 55-67 or 40,45,50")
    average.add_argument("--out", default=None, help="weights folder to write (default: <run>/average)")
    average.add_argument("--device", default="auto", help="auto, cpu or cuda")
    average.set_defaults(handler=_average)

    def add_model_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--weights", default=None,
                             help="weights folder (default: the Hub repo in $MRISEG_HF_REPO, else weights/)")
        command.add_argument("--device", default="auto", help="auto, cpu or cuda")
        command.add_argument("--fp32", action="store_true",
                             help="compute in float32 (default: bfloat16 where the device runs it natively)")

    def add_patient_options(command: argparse.ArgumentParser, out_help: str) -> None:
        command.add_argument("--data", required=True, help="folder of patient folders (PNG or original TIFF)")
        add_model_options(command)
        command.add_argument("--out", default=None, help=out_help)
        command.add_argument("--split", default=str(DEFAULT_SPLIT), help="split JSON used with --subset")
        command.add_argument("--subset", choices=("train", "validation"), default=None,
                             help="only the patients of this side of the split (default: every patient in --data)")
        command.add_argument("--tta", action="store_true", help="average with the mirrored image")
        command.add_argument("--variant", choices=VARIANTS, default="original",
                             help="score copies of the patients as other sources deliver scans: skull-stripped, "
                                  "resampled (1 mm-like, thin slices), brats-like (both, z-scored brain on 0)")
        command.add_argument("--postprocessing", type=postprocessing_setting, action="append",
                             metavar="KEY=VALUE",
                             help="score with this post-processing setting instead of the weights' own (repeat "
                                  "for several), e.g. --postprocessing volume_score=mass_x_slices")

    evaluate = commands.add_parser("evaluate", help="per-volume Dice and more on a folder in the Kaggle layout")
    add_patient_options(evaluate, "write the JSON report here")
    evaluate.set_defaults(handler=_evaluate)

    compare = commands.add_parser("compare-reports",
                                  help="is one model better than another? paired over the patients of two reports")
    compare.add_argument("baseline", help="evaluation report (evaluate --out) of the model to beat")
    compare.add_argument("candidate", help="report of the new model on the same patients")
    compare.set_defaults(handler=_compare_reports)

    errors = commands.add_parser("errors", help="list every false-positive component and missed tumour slice")
    add_patient_options(errors, "write the JSON error list here")
    errors.set_defaults(handler=_errors)

    predict = commands.add_parser(
        "predict", help="segment image files, or whole folders of them, and write masks",
        description="Segment files and folders. A folder is walked: each NIfTI, raster or zip file is one case, the "
                    "DICOM files of each folder are one case per series; masks mirror the folder tree under --out, "
                    "with summary.csv (one row per case), and a run again skips cases done. See docs/batch.md.")
    predict.add_argument("files", nargs="+", metavar="FILE_OR_FOLDER",
                         help="PNG/JPEG/BMP/TIFF, DICOM (.dcm, .zip series, or folders of series), NIfTI, or folders")
    predict.add_argument("--out", required=True, help="folder for the masks (NIfTI for volumes and NIfTI/DICOM "
                                                    "input, a NIfTI input's in its own voxel order and affine; PNG "
                                                    "for a single image slice)")
    predict.add_argument("--threshold", type=float, default=None, help="default: the one stored with the weights")
    predict.add_argument("--tta", action="store_true", help="average with the mirrored image")
    predict.add_argument("--overwrite", action="store_true",
                         help="redo cases an earlier run into --out finished (default: skip them)")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    scale_out = predict.add_mutually_exclusive_group()
    scale_out.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                           help="segment on the workers of this running Dask cluster (they need mriseg installed, "
                                "not the files: this process reads the inputs and writes --out)")
    scale_out.add_argument("--workers", type=non_negative(int), default=0, metavar="N",
                           help="start a local Dask cluster of N single-threaded worker processes (0: segment in "
                                "this process)")
    add_model_options(predict)
    predict.set_defaults(handler=_predict)

    export = commands.add_parser("export", help="tune on validation patients and write a weights folder")
    export.add_argument("--run", required=True, help="training run folder (with best/)")
    export.add_argument("--source", default="best",
                        help="weights folder inside the run to export: best (default) or average")
    export.add_argument("--data", required=True, help="the data folder the run was trained on")
    export.add_argument("--out", default=None,
                        help="weights folder to write (default: <run>/weights; --out weights ships it)")
    export.add_argument("--tta", action="store_true", help="tune and evaluate with mirror test-time augmentation")
    export.add_argument("--postprocessing", type=postprocessing_setting, action="append", metavar="KEY=VALUE",
                        help="after tuning, set this post-processing setting (repeat for several): a rule chosen by "
                             "a paired comparison, e.g. --postprocessing volume_score=mass_x_slices")
    export.add_argument("--device", default="auto", help="auto, cpu or cuda")
    export.set_defaults(handler=_export)

    ensemble = commands.add_parser("ensemble", help="combine exported U-Nets into one ensemble, tuned on validation")
    ensemble.add_argument("--members", required=True, nargs="+", help="two or more exported weights folders")
    ensemble.add_argument("--data", required=True, help="the data folder the members were trained on")
    ensemble.add_argument("--out", required=True, help="weights folder to write (weights: ship it)")
    ensemble.add_argument("--tta", action="store_true", help="tune and evaluate with mirror test-time augmentation")
    ensemble.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ensemble.set_defaults(handler=_ensemble)

    members = commands.add_parser("members", help="write each U-Net of an ensemble as its own weights folder "
                                                  "(to warm-restart from, or to join another ensemble)")
    members.add_argument("--weights", default="weights", help="the ensemble weights folder")
    members.add_argument("--out", required=True, help="folder for unet1, unet2, ...")
    members.set_defaults(handler=_members)

    serve = commands.add_parser("serve", help="run the app with the model loaded and warmed up before the first "
                                "visitor (streamlit run app.py, faster first page)")
    serve.add_argument("--device", default="auto", help="auto, cpu or cuda")
    serve.epilog = "Any other option goes to `streamlit run`, e.g. --server.port 8501 --server.address 0.0.0.0"
    serve.set_defaults(handler=_serve)

    bench = commands.add_parser("bench", help="inference latency and throughput")
    bench.add_argument("--weights", default=None, help="weights folder (default: resolved as for the app)")
    bench.add_argument("--slices", type=int, default=32, help="slices in the volume benchmark")
    bench.add_argument("--repeats", type=int, default=20)
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.handler is _serve:  # Streamlit's own options go on to `streamlit run`
        args.streamlit_options = unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.handler(args)
    except (InputError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
