"""Causal language models: loading a local folder in fp32, LoRA adapters that alone train, and the model saved
with its adapters merged as a plain Hugging Face folder that transformers loads without peft."""

from __future__ import annotations

import pytest
import torch

from tuneloop.errors import ModelError
from tuneloop.models.causal_lm import load_causal_lm, model_source, save_model, with_lora


def test_a_local_folder_loads_in_fp32_with_a_pad_token(tiny_causal_lm):
    network, tokenizer = load_causal_lm(tiny_causal_lm)
    assert all(p.dtype == torch.float32 for p in network.parameters())
    assert tokenizer.pad_token_id is not None and tokenizer.eos_token_id == 102


def test_lora_trains_only_its_adapters_and_saves_merged_as_a_plain_model(tiny_causal_lm, tmp_path):
    from transformers import AutoModelForCausalLM

    network, tokenizer = load_causal_lm(tiny_causal_lm)
    adapted = with_lora(network, rank=4, alpha=8.0, dropout=0.0, targets="attention")
    trainable = {name for name, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    ids = torch.tensor([[101, 2054, 2003, 1996, 3395, 102]])
    optimizer = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = adapted(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    adapted.eval()
    with torch.no_grad():
        expected = adapted(input_ids=ids).logits
    save_model(adapted, tokenizer, tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".model.*.partial")), "written whole, then renamed"
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in plain.named_parameters()), "no peft needed to load it"
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_a_model_that_is_not_a_causal_lm_folder_or_lora_targets_it_lacks_are_clear_errors(tiny_causal_lm,
                                                                                           tmp_path):
    with pytest.raises(ModelError, match="The 'model' parameter must be 'smollm2', a .gguf file or a local"):
        model_source(tmp_path)
    network, _ = load_causal_lm(tiny_causal_lm)
    with pytest.raises(ModelError, match="names modules this model does not have: query"):
        with_lora(network, rank=2, alpha=4.0, dropout=0.0, targets="query,q_proj")


@pytest.mark.e2e
def test_the_packaged_smollm2_is_converted_once_and_read_from_the_cache_after(smollm2_cache):
    [converted] = [p for p in smollm2_cache.iterdir() if not p.name.startswith(".")]
    assert (converted / "model.safetensors").is_file() and (converted / "tokenizer.json").is_file()
    modified = (converted / "model.safetensors").stat().st_mtime_ns
    network, tokenizer = load_causal_lm("smollm2", cache=smollm2_cache)
    assert (converted / "model.safetensors").stat().st_mtime_ns == modified, "read from the cache, not converted"
    assert sum(p.numel() for p in network.parameters()) == 134_515_008
    # The weights survived dequantizing and saving: the model still knows things and ends its turn.
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France? Answer in one "
                                          "word."}], add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    answer = network.generate(input_ids=ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:]
    assert "Paris" in tokenizer.decode(answer) and tokenizer.decode(answer).endswith("<|im_end|>")


def test_the_training_loop_trains_a_causal_lm_on_packed_instructions_and_the_validation_loss_falls(tiny_causal_lm):
    from tuneloop.config import Recipe
    from tuneloop.data.instructions import InstructionExamples, encode, for_training, one_per_row
    from tuneloop.models.causal_lm import CausalLMNetwork
    from tuneloop.training.loop import evaluate, train
    from tuneloop.training.objective import LANGUAGE_MODELLING

    topics = {"crude": "oil barrels opec refinery", "grain": "wheat corn harvest farmers", "ship": "port vessel cargo"}
    prompts, completions = [], []
    for i in range(60):
        topic = list(topics)[i % 3]
        words = topics[topic].split()
        prompts.append(f"topic of: {words[i % len(words)]} {words[(i + 1) % len(words)]}")
        completions.append(topic)
    examples = InstructionExamples(prompts, completions, [f"line {i + 1}" for i in range(60)], "topics.jsonl")
    network, tokenizer = load_causal_lm(tiny_causal_lm)
    # The whole tiny network trains: its random output layer is too weak to move far with adapters alone.
    model = CausalLMNetwork(network)
    train_rows = for_training(encode(tokenizer, examples.subset(range(45)), 32))
    val_rows = one_per_row(encode(tokenizer, examples.subset(range(45, 60)), 32))
    assert len(train_rows) == 45, "an epoch counts examples, packed or not"
    before = evaluate(model, val_rows, torch.device("cpu"), "fp32", LANGUAGE_MODELLING).loss
    result = train(model, train_rows, val_rows, Recipe(epochs=8, learning_rate=3e-2, batch_size=4, patience=0,
                                                       warmup_ratio=0.0), torch.device("cpu"), "fp32",
                   objective=LANGUAGE_MODELLING)
    losses = [record.val_loss for record in result.history]
    assert result.history[0].train_loss > result.history[-1].train_loss
    assert min(losses) < before / 2, f"the answers are learned: validation loss {before:.2f} -> {losses}"
    assert result.best_epoch == 1 + losses.index(min(losses)), "the metric is the loss: lowest is best"


def test_l2sp_holds_a_lora_update_near_the_model_it_started_from(tiny_causal_lm):
    from tuneloop.config import Recipe
    from tuneloop.data.instructions import InstructionExamples, encode, for_training
    from tuneloop.models.causal_lm import CausalLMNetwork
    from tuneloop.training.loop import train
    from tuneloop.training.objective import LANGUAGE_MODELLING

    examples = InstructionExamples([f"topic of: item {i}" for i in range(16)], [" crude", " grain"] * 8,
                                   [f"line {i + 1}" for i in range(16)], "x.jsonl")
    drift = {}
    for strength in (0.0, 50.0):
        network, tokenizer = load_causal_lm(tiny_causal_lm)
        model = CausalLMNetwork(with_lora(network, rank=4, alpha=8.0, dropout=0.0, targets="attention"))
        assert model.pretrained_parameter_names() and all("lora_" in n for n in model.pretrained_parameter_names())
        rows = for_training(encode(tokenizer, examples, 32))
        train(model, rows, None, Recipe(epochs=3, learning_rate=1e-2, batch_size=4, warmup_ratio=0.0, l2sp=strength),
              torch.device("cpu"), "fp32", objective=LANGUAGE_MODELLING)
        drift[strength] = sum(p.norm().item() for n, p in model.named_parameters() if "lora_B" in n)
    assert drift[50.0] < drift[0.0] / 2, f"the update (lora_B, zero at the start) is pulled back toward zero: {drift}"


def test_the_gguf_readers_own_bar_is_off_while_tuneloop_converts_and_back_after(capsys):
    from transformers import modeling_gguf_pytorch_utils as reader

    from tuneloop.models.causal_lm import _no_gguf_bar

    bar = reader.tqdm
    with _no_gguf_bar():
        for _ in reader.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
    assert "Converting" not in capsys.readouterr().err
    assert reader.tqdm is bar, "the reader's own tqdm is put back"
