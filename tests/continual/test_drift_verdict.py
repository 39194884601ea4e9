"""The drift verdict and its recommendation, from the evidence alone."""

from __future__ import annotations

from tuneloop.continual.drift import Evidence, verdict_for

REF = "reviews:3"


def evidence(**shifted: bool) -> list[Evidence]:
    return [Evidence(name, moved, f"{name} {'moved' if moved else 'matches'}") for name, moved in shifted.items()]


def test_no_shifted_evidence_is_no_drift_and_nothing_to_do():
    verdict, recommendation = verdict_for(evidence(labels=False, inputs=False, confidence=False, accuracy=False),
                                          [], REF, has_labels=True)
    assert verdict == "no drift"
    assert recommendation.startswith("nothing to do")
    assert REF in recommendation


def test_no_evidence_at_all_is_no_drift():
    assert verdict_for([], [], REF, has_labels=False)[0] == "no drift"


def test_lower_accuracy_on_the_new_data_calls_for_an_update():
    verdict, recommendation = verdict_for(evidence(labels=False, inputs=True, confidence=True, accuracy=True),
                                          [], REF, has_labels=True)
    assert verdict == "drift, and the model is worse"
    assert "tuneloop adapt reviews DATA" in recommendation
    assert "reviews:3" not in recommendation, "the command names the model, not the version"
    assert "the model does worse on it" in recommendation
    assert "shifted: inputs, confidence, accuracy" in recommendation


def test_a_regressors_higher_error_calls_for_an_update():
    verdict, recommendation = verdict_for(evidence(labels=False, inputs=False, error=True), [], "prices:1",
                                          has_labels=True)
    assert verdict == "drift, and the model is worse"
    assert "tuneloop adapt prices DATA" in recommendation
    assert "shifted: error" in recommendation


def test_new_classes_call_for_an_update_and_are_named():
    verdict, recommendation = verdict_for(evidence(labels=True, inputs=False, accuracy=False),
                                          ["refund", "shipping"], REF, has_labels=True)
    assert verdict == "drift: new classes"
    assert "tuneloop adapt reviews DATA" in recommendation
    assert "new classes (refund, shipping)" in recommendation


def test_new_classes_and_a_worse_model_are_both_said():
    verdict, recommendation = verdict_for(evidence(labels=True, accuracy=True), ["refund"], REF, has_labels=True)
    assert verdict == "drift, and the model is worse"
    assert "new classes (refund)" in recommendation
    assert "shifted: labels, accuracy" in recommendation


def test_shifted_data_the_model_still_handles_needs_no_update_yet():
    verdict, recommendation = verdict_for(evidence(labels=True, inputs=True, confidence=False, accuracy=False),
                                          [], REF, has_labels=True)
    assert verdict == "drift"
    assert "no update needed yet" in recommendation
    assert "labels, inputs" in recommendation
    assert "tuneloop adapt" not in recommendation


def test_shifted_unlabelled_data_asks_for_labels_or_an_update():
    verdict, recommendation = verdict_for(evidence(inputs=True, confidence=False), [], REF, has_labels=False)
    assert verdict == "drift"
    assert "label a sample" in recommendation
    assert "tuneloop drift" in recommendation
    assert "tuneloop adapt reviews DATA" in recommendation
    assert "(inputs)" in recommendation


def test_lower_confidence_alone_is_drift_not_a_worse_model():
    verdict, _ = verdict_for(evidence(inputs=False, confidence=True), [], REF, has_labels=False)
    assert verdict == "drift"


def test_a_reference_without_a_version_is_named_as_given():
    verdict, recommendation = verdict_for(evidence(accuracy=True), [], "reviews", has_labels=True)
    assert verdict == "drift, and the model is worse"
    assert "tuneloop adapt reviews DATA" in recommendation
