"""Training-step cost of quantization: W8A8 student step time / float step time, measured in the same run.

    python -m tools.bench_quant_step --networks r18 mbf --batch-size 32 --steps 10

One step = forward, MSE to a fixed target, backward, SGD update.  Quantized students are measured
with observers frozen (fixed-range training, the bulk of a QuantFace run) and, separately, while
observing.  Float and quantized steps are interleaved and the median is reported, so load from
other processes affects both alike.  Goal: ratio <= 1.2.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from torch import nn

from backbones import available_models, get_model
from quant import QuantConfig, quantize_model, set_observers


def _step_fn(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(images), target).backward()
        optimizer.step()
        if images.is_cuda:
            torch.cuda.synchronize()
    return step


def _timed(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def bench_network(name: str, batch_size: int, steps: int, warmup: int, modes: list[str],
                  device: torch.device) -> dict[str, float]:
    """Median step seconds for the float model and each quantized variant, plus ratios."""
    torch.manual_seed(0)
    model = get_model(name).to(device).train()
    images = torch.randn(batch_size, 3, 112, 112, device=device)
    with torch.no_grad():
        target = model(images).detach()
    variants = {"float": _step_fn(model, images, target)}
    students = {}
    for mode in modes:
        student = quantize_model(model, QuantConfig(weight_bits=8, act_bits=8, mode=mode)).train()
        students[mode] = student
        variants[f"{mode} observing"] = _step_fn(student, images, target)
        variants[f"{mode} frozen"] = _step_fn(student, images, target)
    times: dict[str, list[float]] = {key: [] for key in variants}
    for i in range(warmup + steps):
        for key, step in variants.items():
            if key.endswith("frozen") or key.endswith("observing"):
                set_observers(students[key.split()[0]], key.endswith("observing"))
            seconds = _timed(step)
            if i >= warmup:
                times[key].append(seconds)
    medians = {key: statistics.median(values) for key, values in times.items()}
    return {**medians, **{f"ratio {key}": medians[key] / medians["float"] for key in medians if key != "float"}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", default=["r18", "mbf"], help="backbone names")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--modes", nargs="+", default=["deploy", "quantface"], choices=["deploy", "quantface"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch_size}, {args.steps} timed steps (median), W8A8")
    for name in args.networks:
        if name not in available_models():
            print(f"{name}: not in the backbone registry (available: {', '.join(available_models())}); skipped")
            continue
        result = bench_network(name, args.batch_size, args.steps, args.warmup, args.modes, device)
        print(f"{name}: float step {result['float'] * 1e3:.1f} ms")
        for mode in args.modes:
            for phase in ("frozen", "observing"):
                key = f"{mode} {phase}"
                print(f"  {key:<20} {result[key] * 1e3:8.1f} ms   ratio {result['ratio ' + key]:.3f}")


if __name__ == "__main__":
    main()
