"""utils.cpu_memory: with it, large freed buffers are reused instead of mapped afresh (and faulted in) each step.

mallopt settings hold for the whole process, so each case runs in its own interpreter.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# A training-step-like pattern on 64 MB tensors (above glibc's largest mmap threshold, 32 MB): each round
# allocates three temporaries and frees them.  Reports whether the setting took, the bytes glibc holds in
# mmapped chunks while `x` lives, and the page faults of each round.  With reuse the heap still grows now and
# then over the first rounds (small allocations between the big ones fragment its free space, and a round whose
# buffers find no free chunk large enough takes fresh pages from the top), and rarely later: measured here, 12
# runs of 16 rounds, the rounds from the fifth on faulted 0 or 16384-32768 pages in all, against 49152 in every
# round with glibc's defaults.
STEPS = """
import ctypes, json, resource, torch
from utils.cpu_memory import reuse_freed_cpu_memory
applied = reuse_freed_cpu_memory()
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(2**24)
mapped = libc.mallinfo2().hblkhd
rounds = []
for _ in range(16):
    before = faults()
    a = x * 2; b = a + 1; c = a * b
    del a, b, c
    rounds.append(faults() - before)
print(json.dumps({"applied": applied, "mapped": mapped, "faults": rounds}))
"""


def _run(reuse: bool) -> dict:
    env = {**os.environ, "QUANTFACE_REUSE_CPU_MEMORY": "1" if reuse else "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", STEPS], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_freed_buffers_are_reused_without_page_faults():
    reused, default = _run(True), _run(False)
    assert reused["applied"] and not default["applied"]
    big = 2**26  # x's 64 MB
    assert default["mapped"] >= big > reused["mapped"], (default, reused)
    steady_reused, steady_default = reused["faults"][4:], default["faults"][4:]
    assert statistics.median(steady_reused) == 0, reused  # most rounds reuse every buffer
    assert min(steady_default) >= 3 * 16384, default  # a fresh 64 MB buffer is 16384 pages of 4 KB
    assert 8 * sum(steady_reused) < sum(steady_default), (default, reused)
