"""Images end to end through the command line, on scikit-learn's bundled digits (8x8 scans of handwritten
digits, from the UCI repository; BSD-licensed with scikit-learn) written out as PNG files: a folder per
class, and a CSV of paths."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import run_tuneloop

from tuneloop.data.images import write_image_folder

sklearn_datasets = pytest.importorskip("sklearn.datasets")

CNN = ["--model", "small-cnn", "--hidden-layers", "2", "--hidden-units", "32", "--epochs", "8", "--lr", "3e-3",
       "--quiet"]


def tuneloop(*args: str) -> subprocess.CompletedProcess:
    return run_tuneloop(*args)


def digits(first: int, last: int, classes: tuple[int, ...] = tuple(range(10))) -> tuple[np.ndarray, list[str]]:
    data = sklearn_datasets.load_digits()
    keep = [i for i in range(first, last) if data.target[i] in classes]
    pixels = (data.images[keep] * 255 / 16).round().astype(np.uint8)
    return pixels, [str(data.target[i]) for i in keep]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("digits")
    write_image_folder(*digits(0, 500), root / "train")
    write_image_folder(*digits(1500, 1600), root / "test")
    return {"train": root / "train", "test": root / "test"}


def test_fit_evaluate_predict_images_from_the_command_line(folders, tmp_path):
    workspace = str(tmp_path / "ws")
    fitted = tuneloop("fit", str(folders["train"]), "--workspace", workspace, "--json", *CNN)
    assert fitted.returncode == 0, fitted.stderr
    result = json.loads(fitted.stdout)
    assert result["metrics"]["val_accuracy"] > 0.8, "a small CNN learns 8x8 digits well above chance (0.1)"
    info = json.loads((Path(result["path"]) / "tuneloop-model.json").read_text())
    assert info["adapter"] == "image_net" and info["arch"] == "small-cnn" and info["image_size"] == 8

    evaluated = tuneloop("evaluate", "latest", str(folders["test"]), "--workspace", workspace, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["metrics"]["accuracy"] > 0.7

    out = tmp_path / "out.csv"
    predicted = tuneloop("predict", "latest", str(folders["test"] / "3"), "-o", str(out), "--workspace", workspace)
    assert predicted.returncode == 0, predicted.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(list((folders["test"] / "3").iterdir()))
    assert rows[0]["image"].endswith(".png") and {f"prob_{d}" for d in range(10)} <= set(rows[0])
    assert sum(r["predicted_label"] == "3" for r in rows) >= len(rows) // 2


def test_a_table_of_image_paths_trains_like_a_folder(folders, tmp_path):
    table = tmp_path / "images.csv"
    files = sorted(folders["train"].glob("*/*.png"))
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "digit"])
        writer.writerows([str(p), p.parent.name] for p in files)
    fitted = tuneloop("fit", str(table), "--image-col", "file_name", "--label-col", "digit",
                      "--workspace", str(tmp_path / "ws"), "--json", *CNN)
    assert fitted.returncode == 0, fitted.stderr
    assert json.loads(fitted.stdout)["metrics"]["val_accuracy"] > 0.8


def test_pretrained_head_trains_on_cached_features(folders, tmp_path):
    fitted = tuneloop("fit", str(folders["train"]), "--trainable-layers", "0", "--epochs", "5", "--lr", "3e-3",
                      "--workspace", str(tmp_path / "ws"), "--json", "--quiet")
    assert fitted.returncode == 0, fitted.stderr
    result = json.loads(fitted.stdout)
    assert result["metrics"]["cached_inputs"] == "vectors"
    assert result["metrics"]["val_accuracy"] > 0.5, "ImageNet features separate digits well above chance"
    info = json.loads((Path(result["path"]) / "tuneloop-model.json").read_text())
    assert info["arch"] == "efficientnet-lite0" and info["image_size"] == 64 and info["channels"] == 3


def test_a_base_from_scratch_is_fine_tuned_on_other_classes(tmp_path):
    base_data, new_data = tmp_path / "base", tmp_path / "new"
    write_image_folder(*digits(0, 600, classes=(0, 1, 2, 3, 4)), base_data)
    write_image_folder(*digits(600, 900, classes=(5, 6, 7, 8, 9)), new_data)
    workspace = str(tmp_path / "ws")
    base = tuneloop("fit", str(base_data), "--init", "scratch", "--workspace", workspace, "--json", *CNN)
    assert base.returncode == 0, base.stderr
    base_path = json.loads(base.stdout)["path"]
    tuned = tuneloop("fit", str(new_data), "--model", base_path, "--epochs", "4", "--lr", "1e-3",
                     "--workspace", workspace, "--json", "--quiet")
    assert tuned.returncode == 0, tuned.stderr
    result = json.loads(tuned.stdout)
    info = json.loads((Path(result["path"]) / "tuneloop-model.json").read_text())
    assert info["classes"] == ["5", "6", "7", "8", "9"] and info["arch"] == "small-cnn" and info["width"] == 32
    assert result["metrics"]["val_accuracy"] > 0.5


def test_bad_images_are_named_and_nothing_is_written(folders, tmp_path):
    data = tmp_path / "data"
    write_image_folder(*digits(0, 40, classes=(0, 1)), data)
    (data / "1" / "notes.txt").write_text("not an image")
    workspace = tmp_path / "ws"
    fitted = tuneloop("fit", str(data), "--workspace", str(workspace), *CNN)
    assert fitted.returncode == 2
    assert "notes.txt" in fitted.stderr and "not an image" in fitted.stderr
    assert "Traceback" not in fitted.stderr
    assert not workspace.exists()

    unknown_model = tuneloop("fit", str(folders["train"]), "--model", "resnet-9000", "--workspace", str(workspace))
    assert unknown_model.returncode == 2 and "efficientnet-lite0, small-cnn" in unknown_model.stderr
    assert not workspace.exists()


def test_guided_tuning_of_a_small_cnn_makes_capacity_and_augmentation_decisions(tmp_path):
    """Few training images per class: the CNN overfits them, and the policy answers with augmentation;
    the report shows each decision with its reason."""
    data = tmp_path / "few"
    write_image_folder(*digits(0, 150), data)
    workspace = str(tmp_path / "ws")
    tuned = tuneloop("tune", str(data), "--model", "small-cnn", "--budget", "5trials", "--no-seed-check",
                     "--epochs", "12", "--workspace", workspace, "--json", "--quiet")
    assert tuned.returncode == 0, tuned.stderr
    result = json.loads(tuned.stdout)
    reasons = [t["reason"] for t in result["trials"]]
    assert reasons[0].startswith("start with the cheapest capacity: a CNN of two stages")
    assert any(("augment" in r or "mix" in r or "channels" in r or "CNN" in r) for r in reasons[1:]), reasons
    report = tuneloop("report", result["study"], "--workspace", workspace, "-o", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "r.html").read_text()
    assert "small-cnn" in html and "Confusion matrix of the best model" in html


def test_sampler_strategies_search_the_small_cnn_space(tmp_path):
    data = tmp_path / "few"
    write_image_folder(*digits(0, 150), data)
    tuned = tuneloop("tune", str(data), "--model", "small-cnn", "--strategy", "random", "--budget", "2trials",
                     "--no-seed-check", "--workspace", str(tmp_path / "ws"), "--json", "--quiet")
    assert tuned.returncode == 0, tuned.stderr
    recipes = [t["recipe"] for t in json.loads(tuned.stdout)["trials"] if t["kind"] == "search"]
    assert len(recipes) == 2
    assert all(1 <= r["hidden_layers"] <= 4 and r["hidden_units"] in (32, 64, 128, 256) for r in recipes)
    assert all(0 <= r["mixup"] <= 0.5 and r["lora_rank"] == 0 for r in recipes), "image knobs, no text ones"


def test_a_small_cnn_fits_with_its_own_defaults_not_a_fine_tunes(folders, tmp_path):
    """Without recipe flags the small CNN trains from scratch at its own rate for many epochs stopped by
    validation: the fine-tune defaults left 8x8 digits at 0.73 held out."""
    from tuneloop import api

    run = api.fit(folders["train"], model="small-cnn", workspace=tmp_path / "ws")
    assert (run.recipe.learning_rate, run.recipe.epochs, run.recipe.patience) == (2e-3, 40, 8)
    assert api.evaluate(run, folders["test"]).metrics["accuracy"] > 0.85
