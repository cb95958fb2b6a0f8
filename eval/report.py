"""Benchmark results as one JSON, a QuantFace-style markdown table and IJB ROC plots."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from eval.ijb import far_key
from quant import QuantConfig

VERIFICATION_COLUMNS = {"lfw": "LFW", "cfp_fp": "CFP-FP", "agedb_30": "AgeDB-30", "calfw": "CALFW", "cplfw": "CPLFW"}
IJB_COLUMNS = {"IJBB": "IJB-B", "IJBC": "IJB-C"}
TABLE_FAR = 1e-4


def bits_label(meta: dict[str, Any]) -> str:
    """``FP32`` for a float checkpoint, else the quantization label (``W8A8``, ``W4A4+mixed``)."""
    return QuantConfig.from_dict(meta["quant"]).describe() if meta.get("quant") else "FP32"


def checkpoint_labels(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short distinct names: the file stem, prefixed by parent folders while two names collide."""
    paths = [Path(p).resolve() for p in paths]
    depth = 1
    while True:
        labels = ["/".join(p.with_suffix("").parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels) or depth >= max(len(p.parts) for p in paths):
            return labels
        depth += 1


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    """A markdown table; the first ``text_columns`` columns are left-aligned, the numbers right-aligned."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def benchmark_table(entries: Sequence[dict[str, Any]]) -> str:
    """One row per checkpoint: model, bits, size, verification accuracy (%) and IJB TAR at ``TABLE_FAR`` (%).

    The five standard sets come first (``-`` where not evaluated); other .bin sets get extra columns.
    """
    extra = sorted({t for e in entries for t in e.get("verification", {})} - set(VERIFICATION_COLUMNS))
    columns = {**VERIFICATION_COLUMNS, **{t: t for t in extra}}
    header = ["Model", "Bits", "Size (MB)", *columns.values(),
              *(f"{name} (TAR@FAR={far_key(TABLE_FAR)})" for name in IJB_COLUMNS.values())]
    rows = []
    for entry in entries:
        verification, ijb = entry.get("verification", {}), entry.get("ijb", {})
        cells = [entry["label"], entry["bits"], f"{entry['size_mb']:.2f}"]
        cells += [_cell(verification.get(t, {}).get("accuracy")) for t in columns]
        cells += [_cell(ijb.get(t, {}).get("tar_at_far", {}).get(far_key(TABLE_FAR))) for t in IJB_COLUMNS]
        rows.append(cells)
    return markdown_table(header, rows, text_columns=3)


def thin_curve(fpr: np.ndarray, tpr: np.ndarray, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most ``points`` ROC points, log-spaced in FPR (IJB-C's full curve has millions)."""
    keep = np.unique(np.searchsorted(fpr, np.logspace(-8, 0, points)).clip(0, len(fpr) - 1))
    return fpr[keep], tpr[keep]


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: str | os.PathLike) -> Path:
    """All checkpoints' ROC curves of one IJB target on one log-FPR plot (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, (fpr, tpr) in curves.items():
        keep = fpr > 0
        ax.plot(fpr[keep], tpr[keep], lw=1, label=label)
    ax.set_xscale("log")
    ax.set_xlim(1e-6, 1e-1)
    ax.set_ylim(0.0, 1.0)
    ax.set_xticks([10.0 ** -k for k in range(6, 0, -1)])
    ax.grid(linestyle="--", linewidth=0.5)
    ax.set_xlabel("False accept rate")
    ax.set_ylabel("True accept rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
