"""The data section of the config: where training faces come from and how they are batched."""
from __future__ import annotations

from dataclasses import dataclass

from data.augment import Augmentation
from data.generated import check_options
from utils.config import ConfigError
from utils.sections import Section, at_least, one_of

SOURCES = ("generator", "folder", "recordio", "bn_stats", "noise")


@dataclass(frozen=True)
class DataSettings(Section):
    """Checked when built: a bad source, size or augmentation names its field before any model loads.
    The experimental ``augment_*``, ``generator_upsample`` and ``latent_interpolation`` belong here too."""

    data_source: str = "generator"
    data_path: str = ""
    generator_weights: str = ""
    samples_per_epoch: int = 528000
    bn_stats_steps: int = 500
    bn_stats_lr: float = 0.1
    random_flip: bool = True
    skip_unreadable_images: bool = False
    batch_size: int = 128
    seed: int = 0
    augment_crop: float = 1.0
    augment_rotate: float = 0.0
    augment_color: float = 0.0
    augment_blur: float = 0.0
    augment_mixup: float = 0.0
    generator_upsample: str = "bicubic"
    latent_interpolation: float = 0.0

    def __post_init__(self) -> None:
        one_of("data_source", self.data_source, SOURCES)
        at_least(self, 1, "batch_size", "samples_per_epoch")
        try:
            check_options(self.latent_interpolation, self.generator_upsample)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if self.data_source in ("folder", "recordio") and not self.data_path:
            raise ConfigError(f"data_source={self.data_source!r} needs data_path (the image folder, or the folder "
                              "holding train.rec and train.idx)")
        self.augmentation  # checks the augment_* fields

    @property
    def augmentation(self) -> Augmentation:
        """What is done to each training face (``Augmentation`` checks its own ranges)."""
        try:
            return Augmentation(self.augment_crop, self.augment_rotate, self.augment_color, self.augment_blur,
                                self.augment_mixup)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
