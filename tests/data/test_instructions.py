"""Instruction data: reading prompt/completion and chat files with errors that name the line and field, tokens
whose loss covers the answer only, and packing that leaves each example as if it were alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tuneloop.data import load_examples
from tuneloop.data.instructions import (
    IGNORED,
    InstructionExamples,
    encode,
    for_training,
    one_per_row,
    read_instructions,
)
from tuneloop.errors import DataError
from tuneloop.models.causal_lm import CausalLMNetwork, load_causal_lm
from tuneloop.training.objective import LANGUAGE_MODELLING


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def lm(tiny_causal_lm):
    return load_causal_lm(tiny_causal_lm)


def test_prompt_completion_and_chat_files_are_read_and_saved_back(tmp_path):
    plain = read_instructions(write_jsonl(tmp_path / "plain.jsonl", [
        {"prompt": "Topic of: wheat exports rose.", "completion": "grain"},
        {"prompt": "Topic of: crude fell.", "completion": "crude", "extra": 1}]))
    assert plain.prompts == ["Topic of: wheat exports rose.", "Topic of: crude fell."]
    assert plain.completions == ["grain", "crude"] and plain.locations == ["line 1", "line 2"]
    chat = read_instructions(write_jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "Topic of: ships."},
        {"role": "assistant", "content": "ship"}]}]))
    assert chat.prompts == [[{"role": "system", "content": "Answer with one word."},
                             {"role": "user", "content": "Topic of: ships."}]] and chat.completions == ["ship"]
    both = plain.concat(chat)
    assert len(both) == 3 and both.subset([2]).completions == ["ship"]
    both.save(tmp_path, "kept")
    assert load_examples(tmp_path, "kept") == both
    assert both.fingerprint() == load_examples(tmp_path, "kept").fingerprint() != plain.fingerprint()


@pytest.mark.parametrize(("record", "says"), [
    ({"prompt": "p"}, "expected a 'messages' field (a chat) or 'prompt' and 'completion' fields"),
    ({"prompt": "p", "completion": " "}, "line 1, field 'completion': expected non-empty text"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "line 1, field 'messages': expected a list of at least two"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}, "message 2: expected"),
    ({"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]},
     "the last message must be the assistant's answer"),
])
def test_a_bad_example_is_an_error_naming_file_line_and_field(tmp_path, record, says):
    path = write_jsonl(tmp_path / "bad.jsonl", [record])
    with pytest.raises(DataError, match="bad.jsonl") as error:
        read_instructions(path)
    assert says in str(error.value)


def test_the_loss_covers_the_completion_and_its_end_only(lm):
    network, tokenizer = lm
    examples = InstructionExamples(["crude oil prices fell", [{"role": "user", "content": "topic of wheat"}]],
                                   ["crude", "grain"], ["line 1", "line 2"], "x.jsonl")
    plain, chat = encode(tokenizer, examples, 64)
    prompt_ids = tokenizer("crude oil prices fell", add_special_tokens=False)["input_ids"]
    assert plain.input_ids[:len(prompt_ids)] == prompt_ids
    assert plain.labels == [IGNORED] * len(prompt_ids) + plain.input_ids[len(prompt_ids):]
    assert plain.input_ids[-1] == tokenizer.eos_token_id, "a plain completion ends: the model learns to stop"
    answer = [t for t, label in zip(chat.input_ids, chat.labels, strict=True) if label != IGNORED]
    assert tokenizer.decode(answer) == "grain [SEP]", "a chat's answer with the template's own end of turn"
    assert chat.completion_tokens == 2


def test_an_example_too_long_is_an_error_that_counts_and_names_them(lm):
    _, tokenizer = lm
    examples = InstructionExamples(["word " * 40, "short", "word " * 50], ["a", "b", "c"],
                                   ["line 1", "line 2", "line 3"], "train.jsonl")
    with pytest.raises(DataError, match=r"train.jsonl: 2 of 3 examples are longer than max_length 32 tokens: "
                                        r"line 1 \(42 tokens: prompt 40, completion 2\); line 3"):
        encode(tokenizer, examples, 32)


def test_packed_examples_train_as_if_each_were_alone(lm):
    network, tokenizer = lm
    examples = InstructionExamples(["crude oil prices fell", "wheat", "ships sailed from the port", "corn"],
                                   ["crude", "grain", "ship", "grain"], ["line 1", "line 2", "line 3", "line 4"], "x")
    encoded = encode(tokenizer, examples, 24)
    assert [len(e.input_ids) for e in encoded] == [6, 3, 7, 3]
    rows = for_training(encoded)
    assert len(rows) == 4, "an epoch still counts examples: they are packed per batch"
    batch = rows.batch(np.arange(4))
    assert batch.inputs["input_ids"].shape == (3, 7), "rows as long as the longest example: the two short ones share"
    assert len(batch) == 4 and batch.labels.tolist() == [2, 2, 4], "a row's labels: its learned tokens"
    assert batch.inputs["position_ids"][2].tolist() == [0, 1, 2, 0, 1, 2, 0], "positions restart at each example"
    with torch.no_grad():
        logits = network(input_ids=batch.inputs["input_ids"], attention_mask=batch.inputs["attention_mask"],
                         position_ids=batch.inputs["position_ids"]).logits
        starts = [(1, 0), (2, 0), (0, 0), (2, 3)]
        for example, (row, at) in zip(encoded, starts, strict=True):
            alone = network(input_ids=torch.tensor([example.input_ids])).logits[0]
            torch.testing.assert_close(logits[row, at:at + len(example.input_ids)], alone, atol=1e-5, rtol=1e-4)
    assert batch.inputs["targets"][1, 6] == IGNORED and batch.inputs["targets"][2, 6] == IGNORED, \
        "padding is never learned"


def test_the_loss_of_a_packed_batch_is_the_mean_over_the_learned_tokens_of_each_example_alone(lm):
    network, tokenizer = lm
    examples = InstructionExamples(["crude oil prices fell", "wheat", "ships sailed from the port", "corn"],
                                   ["crude", "grain", "ship", "grain"], ["line 1", "line 2", "line 3", "line 4"], "x")
    encoded = encode(tokenizer, examples, 24)
    wrapped = CausalLMNetwork(network).eval()
    with torch.no_grad():
        packed = wrapped(**for_training(encoded).batch(np.arange(4)).inputs)
        alone = wrapped(**one_per_row(encoded).batch(np.arange(4)).inputs)
    assert len(packed) == 3, "the two short examples share a row"
    torch.testing.assert_close(packed.sum(0), alone.sum(0), atol=1e-4, rtol=1e-5)
    assert alone[:, 1].tolist() == [e.completion_tokens for e in encoded]
    loss = LANGUAGE_MODELLING.loss(alone, torch.tensor([]))
    assert loss.item() == pytest.approx((alone[:, 0].sum() / alone[:, 1].sum()).item())
