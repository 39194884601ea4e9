"""The command line. Each command parses its arguments, then calls the Python API; nothing more.

Errors the user can fix (bad data, bad options) print one message and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from tuneloop import cli_registry
from tuneloop.config import KNOBS, PRECISIONS, Recipe
from tuneloop.errors import ConfigError, TuneloopError
from tuneloop.tasks import modalities
from tuneloop.tracking.target import TRACK_HELP, TRACKERS

SHORT_FLAGS = {"learning_rate": ["--lr"]}


def _trainable_layers(value: str) -> int | str:
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or an int >= 0, got {value!r}") from None


def _add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("recipe (defaults in brackets)")
    group.add_argument("--recipe", metavar="FILE", help="a recipe YAML file; flags below override it")
    for f in fields(Recipe):
        flag = "--" + f.name.replace("_", "-")
        kind = {"int": int, "float": float, "str": str}.get(str(f.type), None)
        if f.name == "trainable_layers":
            kind = _trainable_layers
        declared = KNOBS[f.name]
        group.add_argument(flag, *SHORT_FLAGS.get(f.name, []), dest=f.name, type=kind or str, default=None,
                           choices=declared.choices, help=f"{declared.help} [{f.default}]")


def _keep_models(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0 or 'all'; got {text!r}")
    return value


def _recipe_from(args: argparse.Namespace) -> Recipe:
    base, changes = _recipe_parts(args)
    return (base or Recipe()).replace(**changes)


def _recipe_parts(args: argparse.Namespace) -> tuple[Recipe | None, dict[str, Any]]:
    """The --recipe file's recipe (None without one) and the recipe flags given."""
    base = None
    if args.recipe:
        path = Path(args.recipe)
        if not path.is_file():
            raise ConfigError([f"--recipe {path}: no such file."])
        base = Recipe.from_yaml(path.read_text())
    return base, {f.name: getattr(args, f.name) for f in fields(Recipe) if getattr(args, f.name) is not None}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", metavar="DIR",
                        help="workspace folder [$TUNELOOP_HOME or ./tuneloop-runs]")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only the result")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _training_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=modalities(), default="auto",
                        help="text (fine-tune an encoder), tabular (an MLP on the other columns), image, series (a "
                             "forecaster) or instructions (a causal LM with LoRA); auto: instructions for prompt/"
                             "completion or messages fields, image for a folder or a table of image paths, series for "
                             "a time column, text when a text column is found, else tabular [auto]")
    parser.add_argument("--val", metavar="FILE", help="validation file; without it a stratified split is held out")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share held out when there is no --val [0.2]")
    parser.add_argument("--text-col", help="text column [found by name: text, sentence, content, ...]")
    parser.add_argument("--label-col", help="label column, or a table's target column [found by name: label, "
                                             "class, target, ...]")
    parser.add_argument("--image-col", help="images listed in a table: the path column [found by name: image, "
                                             "path, file, ...]")
    parser.add_argument("--image-size", type=int, metavar="PX",
                        help="images: the side they are resized to [their most common size; >= 64 for EfficientNet]")
    parser.add_argument("--time-col", help="series: the time column [found by name: time, date, year, ...]")
    parser.add_argument("--series-col", help="series in long format: the series-id column [found by name: series, "
                                              "id, symbol, ...]")
    parser.add_argument("--horizon", type=int, metavar="H", help="series: points forecast ahead [a season; or a "
                                                                 "tenth of the series, at most 10]")
    parser.add_argument("--season", type=int, metavar="M", help="series: points in a season, for seasonal-naive "
                                                                "and MASE [from the frequency: 12 for months, ...]")
    parser.add_argument("--model", metavar="PATH",
                        help="texts: a local Hugging Face model folder [packaged all-MiniLM-L6-v2]; images: "
                             "efficientnet-lite0 [default], small-cnn; any kind: a saved run's model folder "
                             "to continue from (its head keeps the rows of the classes it shares with the data)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneloop", description="Fine-tune a pretrained model on labelled data.")
    parser.add_argument("--version", action="version", version=f"tuneloop {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser("fit", help="train a model on labelled data: texts, table rows or images")
    fit.add_argument("data", nargs="?", help="training data: .csv, .tsv, .jsonl or .parquet, or a folder of class "
                                             "folders of images (not needed with --resume)")
    fit.add_argument("--resume", metavar="RUN", help="continue a killed fit from its last finished epoch, on the "
                                                    "same data and recipe (a new run)")
    fit.add_argument("--store", metavar="URL",
                     help="keep the workspace's tables in this PostgreSQL database (see tune --store)")
    fit.add_argument("--track", metavar="mlflow[:URI]", help=TRACK_HELP)
    _training_data(fit)
    _common(fit)
    _add_recipe_flags(fit)

    evaluate = commands.add_parser("evaluate", help="metrics and a confusion matrix of a run on labelled data")
    evaluate.add_argument("run", help="run id, id prefix, 'latest', or a run's model folder")
    evaluate.add_argument("data")
    evaluate.add_argument("--text-col")
    evaluate.add_argument("--label-col")
    evaluate.add_argument("--image-col")
    evaluate.add_argument("--precision", default="auto", choices=(*PRECISIONS, "int8"),
                          help="auto uses bf16 where the CPU or GPU computes it natively; int8 quantizes the "
                               "linear layers (CPU only) and checks a sample of labels against fp32 [auto]")
    _common(evaluate)

    predict = commands.add_parser("predict", help="predict labels and class probabilities (or values) for texts, "
                                                  "table rows or a folder of images")
    predict.add_argument("run", help="run id, id prefix, 'latest', or a run's model folder")
    predict.add_argument("data")
    predict.add_argument("-o", "--output", required=True, metavar="OUT",
                         help="output file (.csv, .tsv, .jsonl or .parquet): the input rows plus predictions")
    predict.add_argument("--text-col")
    predict.add_argument("--image-col")
    predict.add_argument("--precision", default="auto", choices=(*PRECISIONS, "int8"),
                         help="auto uses bf16 where the CPU or GPU computes it natively; int8 quantizes the "
                              "linear layers (CPU only) and checks a sample of labels against fp32 [auto]")
    _common(predict)

    generate = commands.add_parser("generate", help="a language model's answer to a prompt (greedy)")
    generate.add_argument("run", help="run id, id prefix, 'latest', or a run's model folder")
    generate.add_argument("prompt", nargs="+", help="the prompt (several: answered one after another)")
    generate.add_argument("--chat", action="store_true",
                          help="send the prompt as a user's chat message, rendered with the model's chat template")
    generate.add_argument("--max-new-tokens", type=int, metavar="N",
                          help="the longest answer, in tokens [twice the longest answer it trained on]")
    _common(generate)

    tune = commands.add_parser("tune", help="train, diagnose and adjust until a budget, a target or convergence")
    tune.add_argument("data", nargs="?", help="training data (not needed with --resume)")
    _training_data(tune)
    tune.add_argument("--budget", default="15m", help="wall time (15m, 90s, 1h) or a trial count (30trials) [15m]")
    tune.add_argument("--strategy", default="guided", choices=("guided", "grid", "random", "bayes"),
                      help="guided = diagnose and adjust; grid/random/bayes = Optuna samplers [guided]")
    tune.add_argument("--target", type=float, help="stop once the validation metric reaches this")
    tune.add_argument("--prune", default="median", choices=("median", "asha", "none"),
                      help="stop unpromising trials early [median]")
    tune.add_argument("--name", help="study name [study-<time>]")
    tune.add_argument("--plateau", type=int, metavar="N",
                      help="stop after N trials without a gain beyond validation noise, 0 = never (with more "
                           "than a fifth of the budget left, only once the larger moves are tried) [guided: 4; "
                           "grid, random, bayes: 0]")
    tune.add_argument("--keep-models", type=_keep_models, default=3, metavar="N|all",
                      help="models kept on disk when the study ends besides the final one: the N best (records "
                           "and curves of every trial stay) [3]")
    tune.add_argument("--no-refit", dest="refit", action="store_false",
                      help="where validation is too small to tell the best recipes apart, keep the best trial's "
                           "own model instead of cross-validating them and training the chosen one on every "
                           "labelled example")
    tune.add_argument("--no-seed-check", dest="seed_check", action="store_false",
                      help="skip re-running the top two recipes with other seeds (where they are within "
                           "validation noise of each other) before choosing the best")
    tune.add_argument("--resume", metavar="STUDY",
                      help="continue an interrupted study with its own data and options")
    tune.add_argument("--workers", type=int, default=1, metavar="N",
                      help="trials trained at once, each in its own process (the cores split between them); with "
                           "--executor ray, Ray tasks at once [1]")
    tune.add_argument("--executor", choices=("local", "ray"), default=None,
                      help="where trials train: local processes, or Ray tasks on a Ray cluster (pip install "
                           "'tuneloop[ray]') [local]")
    tune.add_argument("--store", metavar="URL",
                      help="keep the workspace's tables in this PostgreSQL database (postgresql://user@host/db; "
                           "pip install 'tuneloop[postgres]'); the workspace folder records it [$TUNELOOP_STORE, "
                           "else SQLite in the folder]")
    tune.add_argument("--ray-address", metavar="ADDR",
                      help="the Ray cluster to run trials on (ray start --head prints it) [a local Ray cluster "
                           "for the study]")
    tune.add_argument("--track", metavar="mlflow[:URI]", help=TRACK_HELP + " (a run for the study, a nested run "
                                                                           "per trial)")
    _common(tune)
    _add_recipe_flags(tune)

    report = commands.add_parser("report", help="write a study's HTML report: curves, decisions, trials, importance")
    report.add_argument("study", help="study id, as 'tuneloop tune' printed it")
    report.add_argument("-o", "--output", metavar="FILE", help="HTML file to write [<workspace>/reports/<study>.html]")
    _common(report)

    find = commands.add_parser("lr-find", help="the learning-rate range test: loss against learning rate, a suggestion")
    find.add_argument("data", help="training data")
    _training_data(find)
    find.add_argument("-o", "--plot", metavar="PNG", help="write the loss curve here")
    _common(find)
    _add_recipe_flags(find)

    export = commands.add_parser("export", help="record a study (a run for it, a nested run per trial) or a run in "
                                                "MLflow, after the fact; again: the same runs, brought up to date")
    export.add_argument("to", choices=TRACKERS, help="the tracker")
    export.add_argument("reference", metavar="STUDY|RUN", help="a study id, or a run id, id prefix or 'latest'")
    export.add_argument("--uri", help="the tracking URI [$MLFLOW_TRACKING_URI, else MLflow's default, "
                                      "sqlite:///mlflow.db in the working folder]")
    _common(export)

    runs = commands.add_parser("runs", help="list the runs in the workspace, and its size on disk")
    _common(runs)

    gc = commands.add_parser("gc", help="free the disk the workspace no longer needs")
    gc.add_argument("--keep-models", type=int, default=3, metavar="N",
                    help="models kept per ended study besides its final one and registered ones [3]")
    gc.add_argument("--cache-mb", type=float, default=None, metavar="MB",
                    help="bound of the feature cache, least recently used files removed first "
                         "[$TUNELOOP_CACHE_MB or 2048]")
    _common(gc)

    dashboard = commands.add_parser("dashboard", help="a live web view of the workspace: studies as they run, runs, "
                                                      "the registry (promote and roll back through the gate)")
    dashboard.add_argument("--workspace", metavar="DIR", help="workspace folder [$TUNELOOP_HOME or ./tuneloop-runs]")
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to listen on; any but a loopback one needs a token [127.0.0.1]")
    dashboard.add_argument("--port", type=int, default=8765, help="port [8765]")
    dashboard.add_argument("--token", help="with --host: the token every request needs [$TUNELOOP_DASHBOARD_TOKEN or a "
                                           "random one, printed]")

    demo = commands.add_parser("demo", help="the tuning loop on real data: who wrote the tweet, Clinton or Trump? "
                                "(about 3 minutes on 2 CPU cores)")
    demo.add_argument("--budget", default=None, help="the study's wall time [150s]")
    demo.add_argument("--train-size", type=int, default=None, help="training tweets [400]")
    demo.add_argument("--val-size", type=int, default=None, help="validation tweets [500]")
    demo.add_argument("--test-size", type=int, default=None, help="held-out tweets no trial sees [1000]")
    demo.add_argument("--seed", type=int, default=None, help="which tweets are drawn [0]")
    _common(demo)
    cli_registry.add_commands(commands, _common, _data_columns)
    return parser


def _data_columns(parser: argparse.ArgumentParser) -> None:
    """Column flags for new data read like a registered model's training data (its own columns by default)."""
    parser.add_argument("--text-col", help="text column [the model's own]")
    parser.add_argument("--label-col", help="label or target column [the model's own]")
    parser.add_argument("--image-col", help="images listed in a table: the path column [the model's own]")


def _version() -> str:
    from tuneloop import __version__

    return __version__


def _emit(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))


def _callbacks(args: argparse.Namespace) -> list:
    if args.quiet or args.json:
        return []
    from tuneloop.report.console import ProgressDisplay

    return [ProgressDisplay()]


def scores_in_words(metrics: dict[str, Any], prefix: str = "val_") -> str:
    """A classifier's accuracy and macro-F1, a regressor's RMSE, MAE and R², a forecaster's MASE, sMAPE, MAE
    and RMSE, or a language model's answer loss, perplexity and exact match, as one phrase."""
    if f"{prefix}perplexity" in metrics:
        match = metrics.get(f"{prefix}exact_match")
        shown = f", exact match {match:.1%}" if match is not None and match == match else ""
        return f"answer loss {metrics[f'{prefix}loss']:.4f}, perplexity {metrics[f'{prefix}perplexity']:.4g}{shown}"
    if f"{prefix}mase" in metrics:
        return (f"MASE {metrics[f'{prefix}mase']:.4f}, sMAPE {metrics[f'{prefix}smape']:.2f}%, "
                f"MAE {metrics[f'{prefix}mae']:.4g}, RMSE {metrics[f'{prefix}rmse']:.4g}")
    if f"{prefix}rmse" in metrics:
        return (f"RMSE {metrics[f'{prefix}rmse']:.4g}, MAE {metrics[f'{prefix}mae']:.4g}, "
                f"R² {metrics[f'{prefix}r2']:.4f}")
    auc = f", ROC AUC {metrics[f'{prefix}roc_auc']:.4f}" if metrics.get(f"{prefix}roc_auc") is not None else ""
    return f"accuracy {metrics[f'{prefix}accuracy']:.4f}, macro-F1 {metrics[f'{prefix}macro_f1']:.4f}{auc}"


def baseline_in_words(metrics: dict[str, Any]) -> str:
    """What a model that learned nothing scores, as a run's metrics record it."""
    if "seasonal_naive_mase" in metrics:
        return (f"seasonal naive: MASE {metrics['seasonal_naive_mase']:.4f}, "
                f"sMAPE {metrics['seasonal_naive_smape']:.2f}%")
    if "mean_predictor_rmse" in metrics:
        return f"predicting the mean: RMSE {metrics['mean_predictor_rmse']:.4g}"
    if "start_val_loss" in metrics:
        return f"the model it started from: answer loss {metrics['start_val_loss']:.4f}"
    if "majority_class_rate" not in metrics:
        return "no baseline measured"
    return f"majority class {metrics['majority_class_rate']:.4f}"


def _fit_summary(metrics: dict[str, Any], run_id: str, path: str) -> str:
    baseline = baseline_in_words(metrics)
    if metrics.get("soup_of"):
        how = f"the weight average of {len(metrics['soup_of'])} runs, val"
    elif metrics.get("averaged_predictions_of"):
        how = f"the averaged predictions of {len(metrics['averaged_predictions_of'])} runs, val"
    elif metrics.get("estimated_by"):
        how = (f"trained on all {metrics['refit_on']} labelled examples for {metrics['epochs_run']} epochs, "
               f"estimated by {metrics['estimated_by']}:")
    else:
        how = f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']}, val"
    return (f"Run {run_id}: {how} {scores_in_words(metrics)} ({baseline}), {metrics['seconds']:.0f}s on "
            f"{metrics['device']} {metrics['precision']}. Model: {path}"
            + (f"\nFrozen-layer caching {metrics['not_cached']}." if metrics.get("not_cached") else ""))


def cmd_fit(args: argparse.Namespace) -> None:
    from tuneloop import api

    recipe, changes = _recipe_parts(args)  # without a recipe file, the kind of data's defaults under the flags
    if args.resume:
        if args.data or recipe is not None or changes:
            raise ConfigError(["fit --resume RUN continues that run on its own data and recipe: give no DATA, "
                               "--recipe or recipe flags with it."])
        run = api.resume_fit(args.resume, workspace=args.workspace, callbacks=_callbacks(args), track=args.track)
    elif not args.data:
        raise ConfigError(["fit needs DATA (the training data), or --resume RUN."])
    else:
        run = api.fit(args.data, args.val, task=args.task, text_col=args.text_col, label_col=args.label_col,
                      image_col=args.image_col, image_size=args.image_size, model=args.model, recipe=recipe,
                      workspace=args.workspace, val_fraction=args.val_fraction, callbacks=_callbacks(args),
                      store=args.store, track=args.track, **_series_options(args), **changes)
    _emit(args, {"run": run.id, "path": str(run.path), "metrics": run.metrics, "recipe": run.recipe.to_dict(),
                 "history": run.history})
    if not args.json:
        print(_fit_summary(run.metrics, run.id, str(run.path)))


def _series_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"time_col": args.time_col, "series_col": args.series_col, "horizon": args.horizon,
            "season": args.season}


def cmd_evaluate(args: argparse.Namespace) -> None:
    from tuneloop import api

    report = api.evaluate(args.run, args.data, text_col=args.text_col, label_col=args.label_col,
                          image_col=args.image_col, workspace=args.workspace, precision=args.precision)
    _emit(args, report.to_dict())
    if not args.json:
        from tuneloop.report.console import confusion_table, stdout

        naive = (f" ({baseline_in_words(report.metrics)})" if "seasonal_naive_mase" in report.metrics else "")
        print(f"{report.n} examples: {scores_in_words(report.metrics, prefix='')}{naive}")
        if report.agreement_with_fp32 is not None:
            print(f"int8 labels agree with fp32 on {report.agreement_with_fp32:.1%} of the sampled texts.")
        if not args.quiet and report.confusion is not None:
            stdout.print(confusion_table(report.confusion, report.classes))


def cmd_predict(args: argparse.Namespace) -> None:
    from collections import Counter

    from tuneloop import api

    predictions = api.predict_file(args.run, args.data, args.output, text_col=args.text_col,
                                   image_col=args.image_col, workspace=args.workspace, precision=args.precision)
    if predictions.texts is not None:
        _emit(args, {"output": str(args.output), "n": len(predictions.texts)})
        if not args.json:
            print(f"Wrote {len(predictions.texts)} completions to {args.output}.")
        return
    if predictions.values is not None:
        values = predictions.values
        _emit(args, {"output": str(args.output), "n": int(values.size), "mean": float(values.mean()),
                     "min": float(values.min()), "max": float(values.max())})
        if not args.json:
            what = (f"{values.shape[1]} forecast points for each of {len(values)} series" if values.ndim == 2
                    else f"{len(values)} predicted values")
            print(f"Wrote {what} to {args.output}: mean {values.mean():.4g}, "
                  f"range {values.min():.4g} to {values.max():.4g}")
        return
    counts = dict(Counter(predictions.labels).most_common())
    payload = {"output": str(args.output), "n": len(predictions.labels), "label_counts": counts}
    if predictions.agreement_with_fp32 is not None:
        payload["agreement_with_fp32"] = predictions.agreement_with_fp32
    if predictions.precision is not None:
        payload.update(precision=predictions.precision, precision_reason=predictions.precision_reason)
    _emit(args, payload)
    if not args.json:
        print(f"Wrote {len(predictions.labels)} predictions to {args.output}: "
              + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if predictions.precision_reason:
            print(f"Predicted in {predictions.precision_reason}.")
        if predictions.agreement_with_fp32 is not None:
            print(f"int8 labels agree with fp32 on {predictions.agreement_with_fp32:.1%} of the sampled texts.")


def cmd_generate(args: argparse.Namespace) -> None:
    from tuneloop import api

    answers = api.generate(args.run, args.prompt, chat=args.chat, max_new_tokens=args.max_new_tokens,
                           workspace=args.workspace)
    _emit(args, {"answers": [{"prompt": p, "answer": a} for p, a in zip(args.prompt, answers, strict=True)]})
    if not args.json:
        print("\n".join(answers))


def cmd_tune(args: argparse.Namespace) -> None:
    from tuneloop import api

    callbacks = []
    if not (args.quiet or args.json):
        from tuneloop.report.console import StudyDisplay

        callbacks.append(StudyDisplay())
    result = api.tune(args.data, args.val, task=args.task, budget=args.budget, strategy=args.strategy,
                      target=args.target, prune=args.prune, text_col=args.text_col, label_col=args.label_col,
                      image_col=args.image_col, image_size=args.image_size, model=args.model,
                      recipe=_recipe_from(args), workspace=args.workspace, val_fraction=args.val_fraction,
                      name=args.name, resume=args.resume, seed_check=args.seed_check, plateau=args.plateau,
                      refit=args.refit, keep_models=args.keep_models, workers=args.workers,
                      executor=args.executor, ray_address=args.ray_address, store=args.store, callbacks=callbacks,
                      track=args.track, **_series_options(args))
    payload = result.to_dict()
    _emit(args, payload)
    if args.json:
        return
    from tuneloop.report.console import stdout, trials_table

    if not args.quiet:
        stdout.print(trials_table(payload))
    if result.choice:
        print(f"Final model: {result.choice}.")
    if result.best_run is None:
        print(f"Study {result.study_id} ended ({result.stop_reason}) without a completed trial.")
    else:
        print(f"Study {result.study_id} ended: {result.stop_reason}, after {len(result.trials)} trials in "
              f"{result.spent_seconds:.0f}s.")
        print(_fit_summary(result.best_run.metrics, result.best_run.id, str(result.best_run.path)))
    print(f"Report: tuneloop report {result.study_id}")


def cmd_export(args: argparse.Namespace) -> None:
    from tuneloop import api

    exported = api.export(args.reference, to=args.to + (f":{args.uri}" if args.uri else ""),
                          workspace=args.workspace)
    _emit(args, exported.to_dict())
    if not args.json:
        runs = 1 + (len(exported.trials) if exported.what == "study" else 0)
        trials = f" and a run per trial ({len(exported.trials)})" if exported.what == "study" else ""
        print(f"Exported {exported.what} {exported.id} to MLflow at {exported.uri}, experiment "
              f"{exported.experiment_id}: run {exported.run_id}{trials}; {exported.new} of {runs} runs new, the "
              f"others brought up to date.")


def cmd_runs(args: argparse.Namespace) -> None:
    from tuneloop import api

    records = api.runs(args.workspace)
    _emit(args, {"runs": [{**r.__dict__, "artifact": str(r.artifact) if r.artifact else None} for r in records]})
    if args.json:
        return
    from rich.table import Table

    from tuneloop.report.console import stdout

    table = Table(title=f"Runs in {os.fspath(args.workspace or '') or 'the workspace'}")
    for name in ("run", "status", "data", "train/val", "validation", "epochs", "time"):
        table.add_column(name, justify="right" if name in ("epochs", "time") else "left")
    for r in records:
        m = r.metrics
        status = r.status if r.artifact is not None or r.status != "completed" else "completed (model removed)"
        table.add_row(r.id, status, Path(r.train_source).name, f"{r.n_train}/{r.n_val}",
                      scores_in_words(m) if m else "",
                      f"{m.get('best_epoch')}/{m.get('epochs_run')}" if m.get("epochs_run") else "",
                      f"{r.seconds:.0f}s" if r.seconds else "")
    stdout.print(table)
    usage = api.disk_usage(args.workspace)
    stdout.print(f"On disk: {_size(sum(usage.values()))} ("
                 + ", ".join(f"{name} {_size(size)}" for name, size in usage.items()) + "); 'tuneloop gc' frees "
                 "what is no longer needed.")


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"


def cmd_gc(args: argparse.Namespace) -> None:
    from tuneloop import api

    collected = api.gc(args.workspace, keep_models=args.keep_models, cache_mb=args.cache_mb)
    _emit(args, {"freed": collected.freed, "models_removed": collected.models_removed,
                 "on_disk": api.disk_usage(args.workspace)})
    if not args.json:
        print(f"Freed {_size(sum(collected.freed.values()))} ("
              + ", ".join(f"{name} {_size(size)}" for name, size in collected.freed.items())
              + f"); {collected.models_removed} models removed, their records kept.")


def cmd_report(args: argparse.Namespace) -> None:
    from tuneloop.report.html import write_report

    path = write_report(args.workspace, args.study, args.output)
    _emit(args, {"study": args.study, "report": str(path)})
    if not args.json:
        print(f"Wrote the report of study {args.study} to {path}")


def cmd_lr_find(args: argparse.Namespace) -> None:
    from tuneloop import api

    finding = api.lr_find(args.data, args.val, task=args.task, text_col=args.text_col, label_col=args.label_col,
                          image_col=args.image_col, image_size=args.image_size, model=args.model,
                          recipe=_recipe_from(args), val_fraction=args.val_fraction, plot=args.plot,
                          **_series_options(args))
    _emit(args, {"suggestion": finding.suggestion, "reason": finding.reason,
                 "learning_rates": finding.learning_rates, "losses": finding.losses, "plot": args.plot})
    if not args.json:
        print(f"Suggested learning rate: {finding.suggestion:g} ({finding.reason})"
              + (f"; plot: {args.plot}" if args.plot else ""))


def cmd_dashboard(args: argparse.Namespace) -> None:
    from tuneloop.dashboard import serve

    serve(args.workspace, host=args.host, port=args.port, token=args.token)


def cmd_demo(args: argparse.Namespace) -> None:
    from tuneloop import api

    options = {name: value for name in ("budget", "train_size", "val_size", "test_size", "seed")
               if (value := getattr(args, name)) is not None}
    callbacks = []
    if not (args.quiet or args.json):
        from tuneloop.report.console import StudyDisplay

        print("Who wrote the tweet, Hillary Clinton or Donald Trump? tuneloop tunes the packaged all-MiniLM-L6-v2 "
              f"on {options.get('train_size', api.DEMO_TRAIN_SIZE)} of their 2016 tweets, validating on "
              f"{options.get('val_size', api.DEMO_VAL_SIZE)} others, for {options.get('budget', api.DEMO_BUDGET)}: "
              "each trial is trained, diagnosed, and the next one adjusted.")
        callbacks.append(StudyDisplay())
    result = api.demo(workspace=args.workspace, callbacks=callbacks, **options)
    _emit(args, result)
    if args.json:
        return
    from tuneloop.report.console import stdout, trials_table

    if not args.quiet:
        stdout.print(trials_table({"study": result["study"], "stop_reason": result["stop_reason"],
                                   "best_run": result["run"], "trials": result["trials"]}))
    if result["choice"]:
        print(f"Final model: {result['choice']}.")
    low, high = result["gain_interval"]
    verdict = "more than noise" if low > 0 else "a loss beyond noise" if high < 0 else "within noise"
    print(f"On {result['n_test']} tweets no trial saw, the final model is right on {result['test_accuracy']:.1%} "
          f"(always answering the commonest author: {result['majority_class_rate']:.1%}). The first trial's model "
          f"was right on {result['first_trial_test_accuracy']:.1%}: the loop gained "
          f"{100 * result['gain_over_first_trial']:+.1f} points (95% interval {100 * low:+.1f} to {100 * high:+.1f}), "
          f"{verdict}.")
    print(f"Reloaded from disk, the final model predicts the same author for {result['reloaded_agreement']:.1%} "
          f"of them. The study took {result['spent_seconds']:.0f}s; its report: tuneloop report {result['study']}")


COMMANDS = {"fit": cmd_fit, "tune": cmd_tune, "report": cmd_report, "evaluate": cmd_evaluate, "export": cmd_export,
            "predict": cmd_predict, "runs": cmd_runs, "gc": cmd_gc, "demo": cmd_demo, "lr-find": cmd_lr_find,
            "dashboard": cmd_dashboard, "generate": cmd_generate,
            **cli_registry.COMMANDS}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args) or 0
    except TuneloopError as exc:
        print(f"tuneloop {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tuneloop: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
