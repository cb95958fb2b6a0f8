"""The evaluation section of the config: which verification sets a training run checks, and how often."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from eval.verification import find_bins
from utils.config import ConfigError
from utils.sections import Section, at_least


@dataclass(frozen=True)
class EvalSettings(Section):
    """Checked when built; ``bins`` finds every set now rather than at the first evaluation step."""

    eval_targets: list[str] = field(default_factory=lambda: ["lfw", "cfp_fp", "agedb_30", "calfw", "cplfw"])
    eval_data_dir: str = ""
    eval_every: int = 2000
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        at_least(self, 1, "eval_every", "eval_batch_size")

    def bins(self) -> dict[str, Path]:
        """``{target: path}`` of the verification sets; {} when ``eval_data_dir`` is empty."""
        if not self.eval_data_dir:
            return {}
        try:
            return find_bins(self.eval_data_dir, self.eval_targets)
        except FileNotFoundError as exc:
            raise ConfigError(f"{exc}; or set eval_data_dir='' to train without verification") from exc
