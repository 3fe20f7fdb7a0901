"""Training throughput (forward + backward + SGD step) of proxy networks, in images/s.

    ./dev python benchmarks/train_throughput.py [--device cpu|cuda] [--batch 64] [--steps 20]

Inputs are random CIFAR-shaped tensors: this measures the network, not a data
loader (proxy training keeps data in memory, on the GPU where it fits).
On CUDA it uses the same settings as proxy training: channels_last, bf16 autocast.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kubenas.nn import ModelConfig, build_model, count_parameters, multiply_adds

NASNET_A = json.loads((Path(__file__).resolve().parents[1] / "examples/genotypes/nasnet-a.json").read_text())
NB201_BEST = {"space": "nasbench201",
              "cell": "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"}

CASES = [
    ("NASNet-A proxy N=2 F=16", NASNET_A, ModelConfig(channels=16, cells_per_stage=2)),
    ("NASNet-A proxy N=2 F=32", NASNET_A, ModelConfig(channels=32, cells_per_stage=2)),
    ("NASNet-A full N=6 F=32 (6@768)", NASNET_A, ModelConfig(channels=32, cells_per_stage=6)),
    ("NAS-Bench-201 best N=5 F=16", NB201_BEST, ModelConfig(channels=16, cells_per_stage=5)),
]


def measure(genotype: dict, cfg: ModelConfig, device: torch.device, batch: int, steps: int) -> float:
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = build_model(genotype, cfg).to(device, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: allocator, cuDNN autotuning
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; batch {args.batch}; {args.steps} timed steps")
    print("| network | params | multiply-adds | images/s |")
    print("|---|---:|---:|---:|")
    for label, genotype, cfg in CASES:
        model = build_model(genotype, cfg)
        rate = measure(genotype, cfg, device, args.batch, args.steps)
        print(f"| {label} | {count_parameters(model) / 1e6:.2f} M | {multiply_adds(model, (3, 32, 32)) / 1e6:.0f} M | {rate:,.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
