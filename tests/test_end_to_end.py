"""End to end through the installed `tuneloop` command, with the packaged all-MiniLM-L6-v2 on real data
(a small stratified slice of Reuters R8). Slow: marked e2e."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from tests.conftest import run_tuneloop, write_csv

from tuneloop.data.demo import reuters_r8, stratified_sample
from tuneloop.data.files import read_table

pytestmark = pytest.mark.e2e


def tuneloop(*args) -> dict:
    done = run_tuneloop(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_fit_evaluate_predict_on_reuters(tmp_path):
    train = stratified_sample(reuters_r8("train"), 240, seed=0)
    test = stratified_sample(reuters_r8("test"), 120, seed=0)
    train_csv = write_csv(tmp_path / "train.csv", ["text", "topic"], zip(train.texts, train.labels, strict=True))
    test_csv = write_csv(tmp_path / "test.csv", ["text", "topic"], zip(test.texts, test.labels, strict=True))
    ws = tmp_path / "ws"

    fitted = tuneloop("fit", train_csv, "--label-col", "topic", "--workspace", ws, "--epochs", "2",
                      "--lr", "1e-4", "--max-length", "96")
    majority = max(Counter(test.labels).values()) / len(test)
    report = tuneloop("evaluate", fitted["run"], test_csv, "--label-col", "topic", "--workspace", ws)
    assert report["metrics"]["accuracy"] > majority + 0.2, (report, majority)

    out = tmp_path / "pred.csv"
    tuneloop("predict", fitted["run"], test_csv, "-o", out, "--workspace", ws)
    predicted = read_table(out).columns["predicted_label"]
    hits = sum(p == t for p, t in zip(predicted, test.labels, strict=True))
    assert hits / len(test) == pytest.approx(report["metrics"]["accuracy"])


def test_demo_tunes_on_tweets_and_compares_the_final_model_with_the_first_on_unseen_tweets(tmp_path):
    result = tuneloop("demo", "--budget", "40s", "--train-size", "120", "--val-size", "150", "--test-size", "300",
                      "--workspace", tmp_path / "ws")
    assert (result["n_train"], result["n_val"], result["n_test"]) == (120, 150, 300)
    assert result["trials"][0]["recipe"]["trainable_layers"] == 0, "the loop starts with the cheapest capacity"
    assert len(result["trials"]) >= 2 and result["spent_seconds"] <= 40 * 1.15
    assert result["reloaded_agreement"] == 1.0
    assert result["test_accuracy"] > result["majority_class_rate"] + 0.1
    low, high = result["gain_interval"]
    assert low <= result["gain_over_first_trial"] <= high
    first = result["first_trial_test_accuracy"]
    assert result["gain_over_first_trial"] == pytest.approx(result["test_accuracy"] - first)


def test_new_topics_are_learned_without_forgetting_and_a_shuffled_update_is_refused(tmp_path):
    """Reuters R8: a head on the packaged encoder learns three topics; new data of two more arrives."""
    old_topics, new_topics = ("acq", "crude", "earn"), ("grain", "ship")
    train_all = reuters_r8("train")
    old = train_all.subset([i for i, t in enumerate(train_all.labels) if t in old_topics])
    new = train_all.subset([i for i, t in enumerate(train_all.labels) if t in new_topics])
    old = stratified_sample(old, 600, seed=0)
    base_csv = write_csv(tmp_path / "base.csv", ["text", "topic"], zip(old.texts, old.labels, strict=True))
    new_csv = write_csv(tmp_path / "new.csv", ["text", "topic"], zip(new.texts, new.labels, strict=True))
    shuffled = list(new.labels)
    __import__("random").Random(0).shuffle(shuffled)
    poisoned_csv = write_csv(tmp_path / "poisoned.csv", ["text", "topic"], zip(new.texts, shuffled, strict=True))
    ws = tmp_path / "ws"

    # Half of the base's texts validate it: the version keeps 300 of them, and the gate's old holdout is 150,
    # enough to show a loss within 0.05 (on 60, one mistake more is 0.017 and the interval spans the tolerance).
    base = tuneloop("fit", base_csv, "--label-col", "topic", "--workspace", ws, "--trainable-layers", "0",
                    "--epochs", "10", "--lr", "3e-3", "--max-length", "96", "--val-fraction", "0.5")
    tuneloop("registry", "register", "news", base["run"], "--workspace", ws)
    tuneloop("registry", "promote", "news:1", "--workspace", ws)
    drift = tuneloop("drift", "news", new_csv, "--workspace", ws)
    assert drift["new_classes"] == list(new_topics) and drift["verdict"].startswith("drift")

    update = tuneloop("adapt", "news", new_csv, "--workspace", ws, "--tolerance", "0.05")
    assert update["promoted"], update["gate"]
    assert update["new_classes"] == list(new_topics)

    # This one goes through the installed entry point, in a process of its own, as a user runs it.
    exe = shutil.which("tuneloop", path=str(Path(sys.executable).parent)) or "tuneloop"
    refused = subprocess.run([exe, "adapt", "news", str(poisoned_csv), "--workspace", str(ws), "--json"],
                             capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900)
    assert refused.returncode == 3, refused.stderr
    assert not json.loads(refused.stdout)["promoted"]
    assert tuneloop("registry", "show", "news", "--workspace", ws)["ref"] == "news:2"


def test_few_tweets_are_chosen_on_every_example_and_trained_on_all_of_them(tmp_path):
    """16 tweets of each candidate: 6 validation tweets cannot choose, so the head is scored by folds over all
    32, the whole encoder is tried (pairs too, where the time left holds 4 per tweet: on a 2-core AVX2 CPU
    90 s do not), and the chosen recipe is trained on all 32 (with those within noise of it, as an ensemble);
    the model beats always answering one."""
    from tuneloop.data.demo import election_tweets

    tweets = election_tweets()
    pool = [i for label in ("HillaryClinton", "realDonaldTrump")
            for i in [j for j, y in enumerate(tweets.labels) if y == label][:16]]
    held_out = [i for label in ("HillaryClinton", "realDonaldTrump")
                for i in [j for j, y in enumerate(tweets.labels) if y == label][100:200]]
    data = write_csv(tmp_path / "tweets.csv", ["text", "label"],
                     [(tweets.texts[i], tweets.labels[i]) for i in pool])
    test = write_csv(tmp_path / "test.csv", ["text", "label"],
                     [(tweets.texts[i], tweets.labels[i]) for i in held_out])
    ws = tmp_path / "ws"
    result = tuneloop("tune", data, "--workspace", ws, "--budget", "90s", "--max-length", "64")
    kinds = [t["kind"] for t in result["trials"]]
    search = [t["recipe"] for t in result["trials"] if t["kind"] == "search"]
    assert any(r["trainable_layers"] == "all" for r in search), "the whole encoder tried"
    assert "cross-validation" in kinds and "refit" in kinds, result["choice"]
    refits = [t for t in result["trials"] if t["kind"] == "refit"]
    final = [t for t in result["trials"] if t["kind"] == "ensemble"] or refits[:1]
    assert result["best_run"] == final[0]["run"] and "all 32 labelled examples" in result["choice"]
    assert result["spent_seconds"] <= 90 * 1.15, "the budget holds, give or take the last step"
    scored = tuneloop("evaluate", final[0]["run"], test, "--workspace", ws)
    assert scored["metrics"]["accuracy"] > 0.6, "above always answering one of two equal classes (0.5)"
