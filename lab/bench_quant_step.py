"""Training-step cost of quantization: W8A8 student step time / float step time, measured in the same run.

    python -m lab.bench_quant_step --networks r18 mbf --batch-size 32 --steps 10

One step = forward, MSE to a fixed target, backward, SGD update.  Quantized students are measured
with observers frozen (fixed-range training, the bulk of a QuantFace run) and, separately, while
observing.  Float and quantized steps are interleaved: each round times one step of every variant, the
ratio is taken within the round (so a slow spell of the machine affects both sides) and the median
over rounds is printed with the range of the per-round ratios.  On CPU the process CPU time is reported
too (with ``--threads 1`` other processes affect it only through shared caches and memory bandwidth).
On CPU freed memory is kept for reuse as ``train_quantization.py`` does (``utils.cpu_memory``; without it
page faults on freshly mapped buffers cost the quantized step more than the float one);
``--malloc-defaults`` measures with glibc's defaults.
Goal (issue 14): W8A8 deploy mode <= 1.10 for r18 and mbf at batch 32, one thread.
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
from utils.cpu_memory import reuse_freed_cpu_memory


def _step_fn(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(images), target).backward()
        optimizer.step()
        if images.is_cuda:
            torch.cuda.synchronize()
    return step


def _timed(step: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one step."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_network(name: str, batch_size: int, steps: int, warmup: int, modes: list[str],
                  device: torch.device) -> dict[str, dict[str, float]]:
    """Per variant: median wall and CPU seconds per step, and (quantized variants) the median, lowest and
    highest per-round ratio to the float step (``wall_ratio``, ``cpu_ratio``, ``cpu_ratio_range``, ...)."""
    torch.manual_seed(0)
    model = get_model(name).to(device).train()
    images = torch.randn(batch_size, 3, 112, 112, device=device)
    with torch.no_grad():
        target = model(images).detach()
    variants = {"float": _step_fn(model, images, target)}
    students = {}
    for mode in modes:
        student = quantize_model(model, QuantConfig(weight_bits=8, act_bits=8, quant_mode=mode)).train()
        students[mode] = student
        variants[f"{mode} observing"] = _step_fn(student, images, target)
        variants[f"{mode} frozen"] = _step_fn(student, images, target)
    times: dict[str, list[tuple[float, float]]] = {key: [] for key in variants}
    for i in range(warmup + steps):
        for key, step in variants.items():
            if key != "float":
                set_observers(students[key.split()[0]], key.endswith("observing"))
            seconds = _timed(step)
            if i >= warmup:
                times[key].append(seconds)
    result = {}
    for key, values in times.items():
        row = {"wall": statistics.median(w for w, _ in values), "cpu": statistics.median(c for _, c in values)}
        if key != "float":
            for clock, index in (("wall", 0), ("cpu", 1)):
                ratios = [mine[index] / base[index] for mine, base in zip(values, times["float"])]
                row[f"{clock}_ratio"] = statistics.median(ratios)
                row[f"{clock}_ratio_range"] = (min(ratios), max(ratios))
        result[key] = row
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", default=["r18", "mbf"], help="backbone names")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--modes", nargs="+", default=["deploy", "quantface"], choices=["deploy", "quantface"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (0 = torch default); 1 makes CPU-time ratios robust on a shared machine")
    parser.add_argument("--malloc-defaults", action="store_true",
                        help="CPU: keep glibc's allocator defaults (every large buffer a fresh mmap, page faults "
                             "and all) instead of reusing freed memory as training does (utils.cpu_memory)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cpu_note = "" if device.type == "cuda" else "; cpu = process CPU time; ratios per round, median (lowest-highest)"
    if device.type == "cpu":
        reused = not args.malloc_defaults and reuse_freed_cpu_memory()
        cpu_note += "; freed memory reused, as training does" if reused else "; glibc allocator defaults"
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"{args.steps} timed steps (median), W8A8{cpu_note}", flush=True)
    for name in args.networks:
        if name not in available_models():
            print(f"{name}: not in the backbone registry (available: {', '.join(available_models())}); skipped",
                  flush=True)
            continue
        result = bench_network(name, args.batch_size, args.steps, args.warmup, args.modes, device)
        base = result.pop("float")
        print(f"{name}: float step wall {base['wall'] * 1e3:.0f} ms, cpu {base['cpu'] * 1e3:.0f} ms")
        clocks = ("wall",) if device.type == "cuda" else ("wall", "cpu")
        for key, value in result.items():
            print(f"  {key:<20}" + "   ".join(
                f"{clock} {value[clock] * 1e3:8.0f} ms  ratio {value[clock + '_ratio']:.3f} "
                f"({value[clock + '_ratio_range'][0]:.3f}-{value[clock + '_ratio_range'][1]:.3f})"
                for clock in clocks), flush=True)


if __name__ == "__main__":
    main()
