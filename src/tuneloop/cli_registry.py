"""The command line of the registry and of continual adaptation: ``registry list|show|register|promote|
rollback|archive``, ``drift`` and ``adapt``. Each command parses its arguments, then calls the API.

A candidate that the promotion gate refuses leaves production unchanged and exits with status 3 (GATE_REFUSED),
so that a scheduled update can tell "not promoted" from an error (status 2).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from tuneloop.tracking.target import TRACK_HELP

GATE_REFUSED = 3


def add_commands(commands: argparse._SubParsersAction, common, recipe_free_data) -> None:
    """Add ``registry``, ``drift`` and ``adapt`` to the command line's subcommands; ``common`` adds the
    workspace/quiet/json flags, ``recipe_free_data`` the data column flags."""
    registry = commands.add_parser("registry", help="named model versions: list, show, register, promote, "
                                                    "rollback, archive")
    actions = registry.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every registered model and its versions")
    common(listing)
    show = actions.add_parser("show", help="a version (production by default), its lineage and the history")
    show.add_argument("reference", metavar="NAME[:VERSION]")
    common(show)
    register = actions.add_parser("register", help="register a completed run's model as a candidate version")
    register.add_argument("name")
    register.add_argument("run", help="run id, id prefix or 'latest'")
    register.add_argument("--data", help="the run's training data, where it is no longer where the run read it")
    register.add_argument("--val", help="the run's validation file, with --data, where it had one")
    common(register)
    promote = actions.add_parser("promote", help="make a version production, through the promotion gate")
    promote.add_argument("reference", metavar="NAME:VERSION")
    promote.add_argument("--force", action="store_true", help="promote even if the gate refuses (needs --reason)")
    promote.add_argument("--reason", help="why: recorded with the version")
    promote.add_argument("--tolerance", type=float, default=None,
                         help="largest loss on the old holdout the gate allows, in accuracy points [0.02]")
    common(promote)
    rollback = actions.add_parser("rollback", help="make an earlier version production again, at once")
    rollback.add_argument("reference", metavar="NAME[:VERSION]",
                          help="the name (back to the previous production version) or a version")
    rollback.add_argument("--reason", help="why: recorded in the history")
    rollback.add_argument("--force", action="store_true",
                          help="roll back to a version that was never production (needs --reason)")
    common(rollback)
    archive = actions.add_parser("archive", help="retire a candidate version")
    archive.add_argument("reference", metavar="NAME:VERSION")
    archive.add_argument("--reason", help="why: recorded in the history")
    common(archive)

    drift = commands.add_parser("drift", help="has new data moved away from what the production model was "
                                              "trained on? A verdict, the evidence, a recommendation")
    drift.add_argument("name", metavar="NAME[:VERSION]")
    drift.add_argument("data", help="new data, labelled or not: a file, or a folder of images")
    recipe_free_data(drift)
    drift.add_argument("--unlabelled", action="store_true", help="ignore any label column: compare inputs only")
    common(drift)

    adapt = commands.add_parser("adapt", help="update the production model on new labelled data without "
                                              "forgetting; promote it if the gate passes")
    adapt.add_argument("name", metavar="NAME")
    adapt.add_argument("data", help="new labelled data: a file, or a folder of class folders of images")
    recipe_free_data(adapt)
    adapt.add_argument("--budget", default="4trials", help="the update's tuning: trials (4trials) or time (10m) "
                                                           "[4trials]")
    adapt.add_argument("--tolerance", type=float, default=None,
                       help="largest loss on the old holdout the gate allows, in accuracy points (for a "
                            "regressor, a share of the mean absolute error) [0.02]")
    adapt.add_argument("--lr", dest="learning_rate", type=float, help="first learning rate [the model's own]")
    adapt.add_argument("--epochs", type=int, help="first epoch count [the model's own]")
    adapt.add_argument("--replay-ratio", type=float, help="share of training examples replayed from the old "
                                                          "data [0.5]")
    adapt.add_argument("--l2sp", type=float, help="pull toward the production model's weights [0.1]")
    adapt.add_argument("--no-promote", dest="promote", action="store_false",
                       help="register the update as a candidate and stop, whatever the gate says")
    adapt.add_argument("--force", action="store_true", help="promote even if the gate refuses (needs --reason)")
    adapt.add_argument("--reason", help="why a forced promotion: recorded with the version")
    adapt.add_argument("--holdout-fraction", type=float, default=0.25,
                       help="share of the new data held out for the gate alone [0.25]")
    adapt.add_argument("--seed", type=int, default=0, help="seed of the splits and the replay draw [0]")
    adapt.add_argument("--track", metavar="mlflow[:URI]", help=TRACK_HELP + " (a run for the update with the gate's "
                                                                            "decision, a nested run per trial)")
    common(adapt)


def _emit(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))


def _version_dict(version) -> dict[str, Any]:
    return {"ref": version.ref, "stage": version.stage, "run": version.run_id, "parent": version.parent,
            "created_at": version.created_at, "metrics": version.metrics, "lineage": version.lineage,
            "gate": version.gate, "reason": version.reason, "folder": str(version.folder)}


def _tolerance(args: argparse.Namespace) -> dict[str, float]:
    return {} if args.tolerance is None else {"tolerance": args.tolerance}


def cmd_registry(args: argparse.Namespace) -> int:
    from tuneloop.continual import versions

    if args.action == "list":
        listed = versions.registered_models(args.workspace)
        _emit(args, {name: [_version_dict(v) for v in found] for name, found in listed.items()})
        if not args.json:
            if not listed:
                print("No registered models. Register a run with: tuneloop registry register NAME RUN")
            for name, found in listed.items():
                print(name)
                for v in found:
                    print(f"  {v.version:>3}  {v.stage:<10}  run {v.run_id}  {_scores(v.metrics)}"
                          + (f"  (from v{v.parent})" if v.parent else ""))
        return 0
    if args.action == "show":
        version, events = versions.show(args.reference, args.workspace)
        _emit(args, {**_version_dict(version), "history": events})
        if not args.json:
            print(f"{version.ref}: {version.stage}, run {version.run_id}, {_scores(version.metrics)}")
            lineage = version.lineage
            print(f"  trained on {lineage.get('new_data') or lineage.get('train_source')}"
                  + (f", adapted from {lineage['adapted_from']}" if lineage.get("adapted_from") else ""))
            if version.gate:
                for check in version.gate["checks"]:
                    print(f"  gate: {'passed' if check['passed'] else 'FAILED'}: {check['summary']}")
            if version.reason:
                print(f"  promoted by force: {version.reason}")
            print("  history:")
            for event in events:
                print(f"    {event['at']}  {event['action']:<8} v{event['version']}"
                      + (" by force" if event.get("forced") else "")
                      + (f" (production was v{event['previous']})" if event.get("previous") else "")
                      + (f": {event['reason']}" if event.get("reason") else ""))
        return 0
    if args.action == "register":
        version = versions.register(args.name, args.run, workspace=args.workspace, data=args.data, val=args.val)
        _emit(args, _version_dict(version))
        if not args.json:
            print(f"Registered run {version.run_id} as {version.ref} ({version.stage}). Make it production with: "
                  f"tuneloop registry promote {version.ref}")
        return 0
    if args.action == "promote":
        try:
            promotion = versions.promote(args.reference, workspace=args.workspace, force=args.force,
                                         reason=args.reason, **_tolerance(args))
        except versions.GateRefused as refused:
            _emit(args, {"promoted": False, "gate": refused.decision.to_dict()})
            if not args.json:
                _print_gate(refused.decision)
                print(f"{refused.version.ref} stays a candidate; production is unchanged.")
            return GATE_REFUSED
        _emit(args, {"promoted": True, **_version_dict(promotion.version),
                     "gate": promotion.decision.to_dict() if promotion.decision else None})
        if not args.json:
            if promotion.decision:
                _print_gate(promotion.decision)
            print(f"{promotion.version.ref} is production" + (" (forced)" if promotion.version.reason and
                                                              args.force else "") + ".")
        return 0
    if args.action == "rollback":
        version = versions.rollback(args.reference, workspace=args.workspace, reason=args.reason, force=args.force)
        _emit(args, _version_dict(version))
        if not args.json:
            print(f"{version.ref} is production again.")
        return 0
    version = versions.archive(args.reference, workspace=args.workspace, reason=args.reason)
    _emit(args, _version_dict(version))
    if not args.json:
        print(f"{version.ref} is archived.")
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    from tuneloop.continual.drift import drift

    report = drift(args.name, args.data, workspace=args.workspace, text_col=args.text_col,
                   label_col=args.label_col, image_col=args.image_col, labelled=False if args.unlabelled else None)
    _emit(args, report.to_dict())
    if not args.json:
        print(f"{report.version} on {report.n_new} new examples: {report.verdict}.")
        for evidence in report.evidence:
            print(f"  {evidence.name}: {'SHIFTED' if evidence.shifted else 'ok'}: {evidence.summary}")
        print(f"Recommendation: {report.recommendation}")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from tuneloop.continual.update import adapt

    callbacks = []
    if not (args.quiet or args.json):
        from tuneloop.report.console import ProgressDisplay

        callbacks.append(ProgressDisplay())
    result = adapt(args.name, args.data, workspace=args.workspace, budget=args.budget, promote=args.promote,
                   force=args.force, reason=args.reason, text_col=args.text_col, label_col=args.label_col,
                   image_col=args.image_col, learning_rate=args.learning_rate, epochs=args.epochs,
                   replay_ratio=args.replay_ratio, l2sp=args.l2sp, holdout_fraction=args.holdout_fraction,
                   seed=args.seed, callbacks=callbacks, track=args.track,
                   **_tolerance(args))
    _emit(args, result.to_dict())
    if not args.json:
        if result.new_classes:
            print(f"New classes, added to the head: {', '.join(result.new_classes)}.")
        for trial in result.trials:
            print(f"  trial {trial.number}: {trial.reason}\n    -> new data {trial.outcome.new_gain:+.4f}, old data "
                  f"{-trial.outcome.old_drop:+.4f} against {result.parent.ref} (validation), run {trial.run_id}")
        _print_gate(result.decision)
        if result.promoted:
            print(f"{result.version.ref} is production (was {result.parent.ref}).")
        else:
            print(f"{result.version.ref} stays a candidate; {result.parent.ref} stays production."
                  + ("" if args.promote else " (--no-promote)"))
    return 0 if result.promoted or not args.promote else GATE_REFUSED


def _print_gate(decision) -> None:
    for check in decision.checks:
        print(f"  gate: {'passed' if check.passed else 'FAILED'}: {check.summary}")
    if decision.caveat:
        print(f"  gate: {decision.caveat}")


def _scores(metrics: dict[str, Any]) -> str:
    from tuneloop.cli import scores_in_words  # imported here: cli imports this module

    return f"val {scores_in_words(metrics)}" if metrics else ""


COMMANDS = {"registry": cmd_registry, "drift": cmd_drift, "adapt": cmd_adapt}
