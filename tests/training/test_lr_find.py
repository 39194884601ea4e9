import json

import numpy as np
import pytest
import torch
from tests.training.test_loop import CPU, toy_sets

from tuneloop.cli import main
from tuneloop.config import Recipe
from tuneloop.training.lr_find import find_learning_rate, suggest


def test_suggests_the_steepest_descent_before_the_minimum():
    rates = list(np.logspace(-6, 0, 61))
    losses = [2.0 if r < 1e-3 else max(0.3, 2.0 - 0.9 * np.log10(r / 1e-3)) for r in rates]
    losses[-5:] = [0.4, 0.8, 1.6, 3.0, 6.0]  # diverging at the end
    rate, reason = suggest(rates, losses)
    assert 1e-3 <= rate <= 0.1
    assert "steepest" in reason or "tenth" in reason
    with pytest.raises(ValueError, match="at least 5"):
        suggest(rates[:3], losses[:3])


def test_range_test_leaves_the_model_as_it_was(tiny_model):
    recipe = Recipe(batch_size=8)
    model, data, _ = toy_sets(tiny_model, recipe)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finding = find_learning_rate(model, data, recipe, CPU, "fp32", steps=40)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert finding.learning_rates[0] == pytest.approx(1e-7) and len(finding.losses) == len(finding.learning_rates)
    assert finding.learning_rates == sorted(finding.learning_rates)
    assert 1e-7 <= finding.suggestion <= 1.0


def test_lr_find_command_writes_the_plot_and_nothing_else(capsys, tiny_model, toy_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plot = tmp_path / "lr.png"
    code = main(["lr-find", str(toy_csv), "--model", str(tiny_model), "--trainable-layers", "0", "-o", str(plot),
                 "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["suggestion"] > 0 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "tuneloop-runs").exists()
