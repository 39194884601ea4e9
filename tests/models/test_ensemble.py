"""An ensemble of saved models: its predictions are its members' average; it saves, loads and predicts as a
run, and a later fine-tune starts from its lead member."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.models.ensemble import Ensemble, is_ensemble, lead_member, member_adapter, write_ensemble


class Fixed(nn.Module):
    def __init__(self, output: list[float]):
        super().__init__()
        self.output = torch.tensor([output])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output.expand(len(x), -1)


def test_the_output_is_the_log_of_the_members_mean_probabilities_or_their_mean_value():
    a, b = Fixed([2.0, 0.0, -1.0]), Fixed([-1.0, 3.0, 0.0])
    x = torch.zeros(4, 1)
    mean = (torch.softmax(a(x), -1) + torch.softmax(b(x), -1)) / 2
    assert torch.allclose(torch.softmax(Ensemble([a, b])(x=x), -1), mean, atol=1e-6)
    assert torch.allclose(Ensemble([Fixed([1.0]), Fixed([3.0])], "values")(x=x), torch.full((4, 1), 2.0))
    with pytest.raises(ValueError, match="average must be one of"):
        Ensemble([a], "median")
    assert Ensemble([a, b]).output is a.output, "what it is not asked to average is its lead member's"


def test_a_saved_ensemble_reloads_and_predicts_the_average_of_its_members(tiny_model, toy_csv, tmp_path):
    workspace = tmp_path / "ws"
    head = api.fit(toy_csv, model=str(tiny_model), workspace=workspace, recipe=Recipe(epochs=2, batch_size=8),
                   trainable_layers=0, learning_rate=1e-2)
    whole = api.fit(toy_csv, model=str(tiny_model), workspace=workspace, recipe=Recipe(epochs=2, batch_size=8),
                    trainable_layers="all", learning_rate=1e-3)
    folder = tmp_path / "ensemble"
    write_ensemble(folder, [whole.path, head.path], "probabilities")
    for name in ("recipe.yaml", "metrics.json", "labels.json"):
        (folder / name).write_text((whole.path / name).read_text())
    assert is_ensemble(folder) and not is_ensemble(whole.path) and member_adapter(folder) == "hf_text"
    assert lead_member(folder) == folder / "member-0" and lead_member(whole.path) == whole.path
    weights = [p.relative_to(whole.path) for p in whole.path.glob("*.safetensors")]
    assert weights and all((folder / "member-0" / w).stat().st_ino == (whole.path / w).stat().st_ino
                           for w in weights), "the members' files are linked, not stored twice"
    texts = ["good fine great", "bad sad awful", "fine"]
    together = api.load_run(str(folder)).predict(texts)
    expected = (whole.predict(texts).probabilities + head.predict(texts).probabilities) / 2
    np.testing.assert_allclose(together.probabilities, expected, atol=1e-5)
    assert together.labels == [together.classes[i] for i in expected.argmax(1)]
    assert api.load_run(str(folder)).adapter == "hf_text"


def test_members_of_different_kinds_are_refused(tiny_model, toy_csv, tmp_path):
    run = api.fit(toy_csv, model=str(tiny_model), workspace=tmp_path / "ws", recipe=Recipe(epochs=1),
                  trainable_layers=0)
    other = tmp_path / "table-model"
    other.mkdir()
    (other / "tuneloop-model.json").write_text(json.dumps({"adapter": "tabular_mlp"}))
    with pytest.raises(ValueError, match="one kind"):
        write_ensemble(tmp_path / "mixed", [run.path, other], "probabilities")


def test_runs_are_combined_by_averaged_predictions_only_where_those_score_higher():
    from tuneloop.pipeline import combine_by
    from tuneloop.training.loop import Evaluation

    def scored(accuracy: float, loss: float) -> Evaluation:
        return Evaluation(loss, None, {"accuracy": accuracy, "rmse": loss})

    assert combine_by(scored(0.90, 0.3), scored(0.92, 0.3), "accuracy") == "predictions"
    assert combine_by(scored(0.90, 0.3), scored(0.90, 0.2), "accuracy") == "weights", "a tie: one model to run"
    assert combine_by(scored(0.90, 0.3), scored(0.80, 0.2), "loss") == "predictions", "a loss: lower is better"
    assert combine_by(scored(0.90, 0.2), scored(0.95, 0.3), "rmse") == "weights"
