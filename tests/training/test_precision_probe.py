"""The training precision "auto" measures where bf16 is native: the rule, the machine's record, the real step."""

from __future__ import annotations

import json

import pytest
import torch
from tests.conftest import sentiment_rows, write_csv

from tuneloop.config import Recipe
from tuneloop.tasks import network_of, training_precision
from tuneloop.tasks.text import TextTask
from tuneloop.training import precision_probe
from tuneloop.training.precision_probe import faster_precision, measured_precision, probe_training_precision

CPU = torch.device("cpu")


def test_bf16_is_taken_only_where_it_saves_at_least_the_margin():
    assert faster_precision({"fp32": 1.0, "bf16": 0.5}) == "bf16"
    assert faster_precision({"fp32": 1.0, "bf16": 0.97}) == "fp32", "within 5%: a close call stays fp32"
    assert faster_precision({"fp32": 1.0, "bf16": 1.2}) == "fp32"


def test_a_measurement_is_recorded_per_machine_and_read_back_instead_of_measuring_again(tmp_path, monkeypatch):
    timings = {"fp32": 2.0, "bf16": 1.0}
    monkeypatch.setattr(precision_probe, "time_steps", lambda step, device, precision: timings[precision])
    built = []

    def make_step():
        built.append(1)
        return lambda precision: None

    path = tmp_path / "probe.json"
    assert measured_precision("gpu | net A", CPU, make_step, path) == ("bf16", timings)
    assert built == [1]
    assert json.loads(path.read_text())["gpu | net A"]["precision"] == "bf16"
    timings = {"fp32": 1.0, "bf16": 2.0}  # a new measurement would now say fp32
    assert measured_precision("gpu | net A", CPU, make_step, path)[0] == "bf16", "read back, not measured"
    assert built == [1]
    assert measured_precision("gpu | net B", CPU, make_step, path)[0] == "fp32", "another network is measured"
    assert set(json.loads(path.read_text())) == {"gpu | net A", "gpu | net B"}
    path.write_text("{not json")
    assert measured_precision("gpu | net A", CPU, make_step, path)[0] == "fp32", "a damaged record is redone"


@pytest.fixture()
def task(tiny_model, tmp_path) -> TextTask:
    data = write_csv(tmp_path / "train.csv", ["text", "label"], sentiment_rows(20))
    return TextTask.load(data, None, text_col=None, label_col=None, model=str(tiny_model), val_fraction=0.25, seed=0)


def test_the_probe_times_a_real_training_step_of_the_tasks_network_without_moving_the_runs_draws(task, tmp_path,
                                                                                                 monkeypatch):
    # Where bf16 is native, earlier tests' runs have probed this network already: forget what they chose.
    monkeypatch.setattr(precision_probe, "_chosen", {})
    path = tmp_path / "probe.json"
    recipe = Recipe(batch_size=8, trainable_layers=0)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    chosen = probe_training_precision(task, recipe, CPU, network_of(task, recipe), path)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert chosen in ("fp32", "bf16")
    [(key, record)] = json.loads(path.read_text()).items()
    assert "TextTask" in key and "batch 8" in key and "max_length" in key
    assert record["precision"] == chosen and set(record["seconds"]) == {"fp32", "bf16"}


def test_auto_measures_only_where_bf16_is_native(task, monkeypatch):
    def probe(*args):
        raise AssertionError("measured")

    monkeypatch.setattr(precision_probe, "probe_training_precision", probe)
    monkeypatch.setattr("tuneloop.training.device.bf16_is_fast", lambda device: False)
    assert training_precision(task, "auto", CPU, Recipe()) == "fp32"
    assert training_precision(task, "bf16", CPU, Recipe()) == "bf16", "asked for: no measuring"
    monkeypatch.setattr("tuneloop.training.device.bf16_is_fast", lambda device: True)
    monkeypatch.setattr(precision_probe, "probe_training_precision", lambda task, recipe, device, network: "fp32")
    assert training_precision(task, "auto", CPU, Recipe()) == "fp32"
    assert training_precision(task, "auto", CPU) == "bf16", "no recipe to measure with: the fixed rule"
