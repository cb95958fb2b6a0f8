"""utils.distributed: device resolution says when ``auto`` falls back to the CPU."""
from __future__ import annotations

import warnings

import pytest
import torch

from utils.distributed import resolve_device


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback happens only where torch sees no CUDA")
def test_auto_without_cuda_warns_once_what_to_do_and_cpu_stays_quiet():
    with pytest.warns(RuntimeWarning, match=r"device=auto: torch .*running on the CPU.*docs/gpu\.md") as caught:
        assert resolve_device("auto") == torch.device("cpu")
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_device("cpu") == torch.device("cpu")
