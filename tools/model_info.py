"""Parameters, multiply-accumulates and model size at given bit widths for a registered backbone.

    python -m tools.model_info r100 --bits 32 8 6 4 [--num-features 512] [--kwargs '{"scale": 1}']

Size convention (as in the QuantFace paper's tables): ``MB = parameters x bits / 8 / 1e6`` (decimal
megabytes, every parameter stored at the given width; 32 bit = 4 bytes).  r100: 65.16 M parameters
-> 260.62 MB at 32 bit, 65.16 MB at 8 bit.  The paper lists 261.22 / 65.31 MB (r50 174.68, r18 96.22
at 32 bit): the same decimal convention, 0.1-0.3 % higher because it also counts non-parameter
tensors such as BatchNorm statistics, which this tool reports separately as ``buffers``.

MACs count Conv2d and Linear multiply-accumulates of one image, found with forward hooks
(BatchNorm, PReLU and additions are not counted; 1 MAC = 2 FLOPs).
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

import torch
from torch import nn

from utils.modes import eval_mode


def size_mb(num_values: int, bits: int) -> float:
    """Storage of ``num_values`` numbers at ``bits`` each, in decimal megabytes (QuantFace's MB)."""
    return num_values * bits / 8 / 1e6


def count_macs(model: nn.Module, image_size: int = 112) -> int:
    """Conv2d + Linear multiply-accumulates for one ``image_size`` x ``image_size`` RGB image."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        per_output = module.weight[0].numel()  # (in / groups) x kh x kw, or in_features
        total += output.numel() // output.shape[0] * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return total


def model_stats(model: nn.Module, image_size: int = 112, bits: Sequence[int] = (32, 8, 6, 4)) -> dict[str, Any]:
    """``params``, ``buffers`` (BN running statistics), ``macs`` and ``size_mb`` {bits: MB} of a float model."""
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return {"params": params, "buffers": buffers, "macs": count_macs(model, image_size),
            "size_mb": {int(b): size_mb(params, b) for b in bits}}


def format_stats(name: str, stats: dict[str, Any]) -> str:
    """One human-readable block: parameters (M), GMACs and MB per bit width."""
    lines = [f"{name}: {stats['params'] / 1e6:.2f} M parameters (+{stats['buffers'] / 1e6:.3f} M BN buffers), "
             f"{stats['macs'] / 1e9:.3f} GMACs"]
    lines += [f"  {bits:>2}-bit: {mb:9.2f} MB" for bits, mb in stats["size_mb"].items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from backbones import available_models, get_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("network", help=f"backbone name ({', '.join(available_models())})")
    parser.add_argument("--bits", type=int, nargs="+", default=[32, 8, 6, 4], help="bit widths to size")
    parser.add_argument("--num-features", type=int, default=512, help="embedding size")
    parser.add_argument("--image-size", type=int, default=None, help="input side for MAC counting (default: the "
                        "model's declared input size)")
    parser.add_argument("--kwargs", default="{}", help='extra constructor keywords as JSON, e.g. \'{"scale": 1}\'')
    args = parser.parse_args(argv)
    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as exc:
        parser.error(f"--kwargs is not valid JSON ({exc}); example: --kwargs '{{\"scale\": 1}}'")
    try:
        model = get_model(args.network, num_features=args.num_features, **kwargs)
    except ValueError as exc:
        parser.error(str(exc))
    stats = model_stats(model, args.image_size or model.input_spec.size, args.bits)
    print(format_stats(args.network, stats))
    return stats


if __name__ == "__main__":
    main()
