"""Training throughput of the image networks by memory layout and precision: why tuneloop's image networks
run channels-last, and why EfficientNet trains in fp32 under precision 'auto'.

One training step (forward, cross-entropy, backward, fused AdamW) on a fixed batch of random pixels, timed
after two warm-up steps, for the small CNN (3 stages up to 64 channels, 28 px grey images, batch 64) and
EfficientNet-Lite0 (64 px RGB, batch 32), each with contiguous (NCHW) and channels-last (NHWC) tensors, in
fp32 and bf16 autocast. The layout is forced here on both sides; the networks themselves always use
channels-last.

Reproduce (from the repository root, CPU):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/image_throughput.py --json benchmarks/results/image_throughput.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from peers import cpu_kind

from tuneloop.models.image_nets import build_image_network
from tuneloop.training.device import autocast, pick_device

CASES = (("small-cnn", 28, 1, 64, 20), ("efficientnet-lite0", 64, 3, 32, 5))


def samples_per_s(arch: str, size: int, channels: int, batch: int, steps: int, precision: str,
                  channels_last: bool, device: torch.device) -> float:
    torch.manual_seed(0)
    network = build_image_network(arch, 10, in_channels=channels, recipe_dropout=0.1, width=64, stages=3,
                                  pretrained=False).to(device)
    network.set_trainable("all")
    network.train()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    network = network.to(memory_format=layout)
    normalize = network.normalize
    network.normalize = lambda pixels: normalize(pixels).contiguous(memory_format=layout)  # force the layout
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, fused=True)
    pixels = torch.randint(0, 255, (batch, channels, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    for step in range(steps + 2):
        if step == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        with autocast(device, precision):
            outputs = network(pixels)
        torch.nn.functional.cross_entropy(outputs.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = pick_device()
    rows = []
    for arch, size, channels, batch, steps in CASES:
        for precision in ("fp32", "bf16"):
            speeds = {layout: samples_per_s(arch, size, channels, batch, steps, precision, layout == "channels-last",
                                            device) for layout in ("contiguous", "channels-last")}
            row = {"network": arch, "pixels": size, "precision": precision,
                   **{k: round(v, 1) for k, v in speeds.items()},
                   "speed-up": round(speeds["channels-last"] / speeds["contiguous"], 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "cpu": cpu_kind(), "device": device.type, "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
