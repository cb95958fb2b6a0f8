"""What this CPU's integer kernels can do: VNNI decides whether 8-bit weights in int8 containers are exact."""
from __future__ import annotations

from pathlib import Path


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux: nothing known
        return "unknown", set()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return name, set(flags)


def has_vnni() -> bool:
    """True on x86 CPUs with AVX512-VNNI or AVX-VNNI (uint8 x int8 dot products without int16 saturation)."""
    return bool({"avx512_vnni", "avx_vnni"} & _cpuinfo()[1])


def cpu_description() -> str:
    """The CPU model and its best integer-kernel ISA, e.g. ``Intel(R) Xeon(R) Processor (avx512_vnni)``."""
    name, flags = _cpuinfo()
    isa = [f for f in ("avx512_vnni", "avx_vnni", "avx512f", "avx2") if f in flags]
    return f"{name} ({isa[0] if isa else 'no AVX2'})"


def isa_flags() -> str:
    """Which of the integer-kernel ISAs this CPU has, each named with yes/no (what a speed figure depends on)."""
    flags = _cpuinfo()[1]
    return ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni"))
