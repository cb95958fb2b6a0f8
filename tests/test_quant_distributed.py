"""sync_observers across two real processes (gloo, CPU): ranges become min-of-mins / max-of-maxes."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from quant import QuantConfig, freeze_observers, quantize_model, quantizers, sync_observers
from quant.quantizer import qparams_from_range
from backbones.layers import Add

WORLD = 2


class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.prelu = nn.PReLU(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.add = Add()
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.conv1(x))
        return self.fc(torch.flatten(self.add(self.conv2(x), x), 1))


def student(act_observer: str) -> nn.Module:
    torch.manual_seed(0)
    return quantize_model(ResidualNet(), QuantConfig(act_observer=act_observer))


def ranges(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: torch.cat([q.estimator.min_val, q.estimator.max_val]).clone()
            for name, q in quantizers(model) if q.has_state}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        result = {}
        for observer in ("minmax", "lsq"):
            model = student(observer)
            torch.manual_seed(100 + rank)
            with torch.no_grad():  # each rank observes different data
                model(torch.randn(3, 3, 6, 6) * (1 + 2 * rank) + rank)
            local = ranges(model)
            freeze_observers(model)
            result[observer] = {"local": local, "synced": ranges(model),
                                "scale": {n: q.scale.detach().clone() for n, q in quantizers(model) if q.has_state},
                                "zero_point": {n: q.zero_point.detach().clone() for n, q in quantizers(model)
                                               if q.has_state},
                                "observing": [q.observer_enabled for _, q in quantizers(model)]}
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sync_observers_all_reduces_ranges_across_processes(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for observer in ("minmax", "lsq"):
        per_rank = [r[observer] for r in results]
        names = sorted(per_rank[0]["local"])
        # conv2 and the sum read the PReLU's output through one quantizer (listed once, as conv2.input_quant)
        assert names == ["add.input0_quant", "add.output_quant", "conv1.input_quant", "conv2.input_quant"]
        for name in names:
            local = [r["local"][name] for r in per_rank]
            assert not torch.equal(local[0], local[1]), "ranks must have observed different data"
            expected_min = torch.minimum(local[0][:1], local[1][:1])
            expected_max = torch.maximum(local[0][1:], local[1][1:])
            for r in per_rank:
                assert torch.equal(r["synced"][name], torch.cat([expected_min, expected_max]))
                scale, zero_point = qparams_from_range(expected_min, expected_max, 0, 255, False)
                assert torch.equal(r["scale"][name], scale)
                assert torch.equal(r["zero_point"][name].to(torch.int32), zero_point)
                assert not any(r["observing"])


def test_sync_observers_is_a_no_op_without_torch_distributed() -> None:
    model = student("minmax")
    with torch.no_grad():
        model(torch.randn(2, 3, 6, 6))
    before = ranges(model)
    assert not dist.is_initialized()
    sync_observers(model)
    after = ranges(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
