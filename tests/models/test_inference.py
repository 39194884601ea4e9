"""Inference with precision int8: dynamically quantized linear layers on the CPU, checked against fp32."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.conftest import sentiment_rows, write_csv
from torch import nn

from tuneloop import api
from tuneloop.cli import main
from tuneloop.errors import ConfigError, ModelError
from tuneloop.models import get_adapter
from tuneloop.models.quantize import agreement, agreement_sample, int8_is_the_faster_match, quantize_int8
from tuneloop.tasks.text import AUTO_INT8_MIN_TEXTS, TextTask
from tuneloop.training.device import bf16_is_fast
from tuneloop.training.loop import predict_probabilities

CPU = torch.device("cpu")
TEST_ROWS = sentiment_rows(30, seed=7)
TEST_TEXTS = [text for text, _ in TEST_ROWS]


@pytest.fixture(scope="module")
def fitted(tiny_model, tmp_path_factory) -> api.Run:
    root = tmp_path_factory.mktemp("int8")
    data = write_csv(root / "train.csv", ["text", "label"], sentiment_rows(40))
    run = api.fit(data, model=str(tiny_model), workspace=root / "ws", epochs=3, learning_rate=2e-3, batch_size=8)
    assert run.metrics["val_accuracy"] > 0.9
    return run


@pytest.fixture()
def run(fitted) -> api.Run:
    """The fitted run freshly loaded from its folder: nothing quantized or checked yet."""
    return api.load_run(fitted.path)


@pytest.fixture()
def test_csv(tmp_path):
    return write_csv(tmp_path / "test.csv", ["text", "label"], TEST_ROWS)


def test_agreement_is_the_share_of_identical_labels():
    reference = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    quantized = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4]])
    assert agreement(reference, quantized) == 0.5
    assert agreement(reference, reference) == 1.0
    with pytest.raises(ValueError, match="different shapes"):
        agreement(reference, quantized[:3])


def test_agreement_sample_spreads_over_all_texts():
    assert agreement_sample(5).tolist() == [0, 1, 2, 3, 4]
    sample = agreement_sample(10_000)
    assert len(sample) == 256 and sample[0] == 0 and sample[-1] == 9_999
    assert len(np.unique(sample)) == 256


def test_quantized_copy_has_int8_linear_layers_and_predicts_like_fp32(run):
    model, tokenizer = run.model()
    linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    quantized = quantize_int8(model)
    int8_layers = [m for m in quantized.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(int8_layers) == linear > 0
    assert all(m.weight().dtype == torch.qint8 for m in int8_layers)
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == linear, "the original stays fp32"

    encoded = get_adapter("hf_text").encode(tokenizer, TEST_TEXTS, None, run.recipe)
    reference = predict_probabilities(model, encoded, CPU, "fp32")
    probabilities = predict_probabilities(quantized, encoded, CPU, "fp32")
    assert np.abs(probabilities - reference).max() < 0.02
    assert agreement(reference, probabilities) >= 0.95


def test_predict_int8_reports_its_agreement_and_quantizes_once(run):
    fp32 = api.predict(run, TEST_TEXTS, precision="fp32")
    assert fp32.agreement_with_fp32 is None
    first = api.predict(run, TEST_TEXTS, precision="int8")
    assert first.agreement_with_fp32 is not None and first.agreement_with_fp32 >= 0.95
    assert np.mean(np.array(first.labels) == np.array(fp32.labels)) >= 0.95
    quantized = run.int8_model()
    second = run.predict(TEST_TEXTS[:5], precision="int8")
    assert run.int8_model() is quantized
    assert second.agreement_with_fp32 == first.agreement_with_fp32


def test_evaluate_int8_includes_the_agreement_in_its_report(run, test_csv):
    assert "agreement_with_fp32" not in api.evaluate(run, test_csv, precision="fp32").to_dict()
    report = api.evaluate(run, test_csv, precision="int8").to_dict()
    assert report["agreement_with_fp32"] >= 0.95 and report["metrics"]["accuracy"] > 0.9


class Contrary(nn.Module):
    """A stand-in for a badly quantized model: the classifier's logits, negated."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return -self.model(input_ids, attention_mask)


def test_low_agreement_warns_with_the_number(run, monkeypatch):
    monkeypatch.setattr("tuneloop.run.quantize_int8", lambda model, device: Contrary(model))
    with pytest.warns(UserWarning, match=r"int8 predictions agree with fp32 on \d+\.\d% of 60 sampled texts"):
        predictions = run.predict(TEST_TEXTS, precision="int8")
    assert predictions.agreement_with_fp32 < 0.1


def test_int8_on_a_gpu_is_refused_with_a_clear_error(run, monkeypatch):
    model, _ = run.model()
    with pytest.raises(ModelError, match="'int8' .* runs on the CPU only; got device cuda"):
        quantize_int8(model, "cuda")
    with pytest.raises(ModelError, match="CPU only; got device meta"):
        quantize_int8(nn.Linear(4, 2, device="meta"))
    monkeypatch.setattr("tuneloop.run.pick_device", lambda: torch.device("cuda"))
    with pytest.raises(ModelError, match="CPU only"):
        run.predict(TEST_TEXTS, precision="int8")


def test_unknown_precision_names_the_allowed_values(run):
    with pytest.raises(ConfigError, match="'precision' parameter must be one of auto, bf16, fp32, int8. Got 'int4'"):
        run.predict(TEST_TEXTS, precision="int4")


def test_cli_predict_and_evaluate_accept_int8(fitted, test_csv, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(fitted.path), str(test_csv), "-o", str(out), "--precision", "int8", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["n"] == 60 and payload["agreement_with_fp32"] >= 0.95
    assert main(["evaluate", str(fitted.path), str(test_csv), "--precision", "int8", "--quiet"]) == 0
    assert "int8 labels agree with fp32 on" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["predict", str(fitted.path), str(test_csv), "-o", str(out), "--precision", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_int8_is_chosen_only_where_it_agrees_and_is_faster():
    assert int8_is_the_faster_match(0.995, fp32_seconds=2.0, int8_seconds=1.0)
    assert not int8_is_the_faster_match(0.98, fp32_seconds=2.0, int8_seconds=1.0), "agrees too rarely"
    assert not int8_is_the_faster_match(1.0, fp32_seconds=1.0, int8_seconds=1.2), "slower"


@pytest.mark.skipif(bf16_is_fast(CPU), reason="on a CPU with native bf16, auto predicts in bf16 without measuring")
def test_auto_measures_int8_against_fp32_once_for_many_texts_and_says_what_it_chose(run, monkeypatch):
    few = run.predict(TEST_TEXTS)
    assert few.precision == "fp32" and "too few" in few.precision_reason
    many = [text for _ in range(-(-AUTO_INT8_MIN_TEXTS // len(TEST_TEXTS))) for text in TEST_TEXTS]
    predictions = run.predict(many)
    assert predictions.precision in ("int8", "fp32")
    assert "sampled texts" in predictions.precision_reason and "agree with fp32" in predictions.precision_reason
    reference = run.predict_texts(many, "fp32").labels
    same = np.mean(np.array(predictions.labels) == np.array(reference))
    assert same >= 0.99, "whatever auto chose predicts like fp32"

    def measured_again(*args):
        raise AssertionError("measured again")
    monkeypatch.setattr(TextTask, "measure_int8", measured_again)
    assert run.predict(many).precision == predictions.precision


def test_auto_on_a_cpu_with_native_bf16_predicts_in_bf16(run, monkeypatch):
    monkeypatch.setattr("tuneloop.tasks.text.bf16_is_fast", lambda device: True)
    monkeypatch.setattr("tuneloop.training.device.bf16_is_fast", lambda device: True)
    predictions = run.predict(TEST_TEXTS)
    assert predictions.precision == "bf16" and "on this CPU" in predictions.precision_reason
