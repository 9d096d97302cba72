"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Training-free: a pretrained backbone's mid-level feature maps, each averaged over its 3 x 3
neighbourhood ("locally aware patch features"), are brought to one grid (the coarser map
upsampled) and concatenated; the vectors of all training images form a memory bank,
thinned by greedy k-center coreset selection. A test vector scores its distance to the
nearest bank vector; the map is upsampled and Gaussian-smoothed, and the image score is
the largest patch score, re-weighted by how dense the bank is around its nearest
neighbour (eq. 7).

It shares the backbones and the memory bank with Patch AE, so it is the reference Patch AE
has to beat: the same features without the learned compression.
"""

from __future__ import annotations

from pathlib import Path

import keras

from reconad.config import InputConfig, Section
from reconad.data.layout import CategoryData
from reconad.memory_bank import (
    MEMORY_BANK_FILE,
    BankConfig,
    KnnScoreConfig,
    MemoryBankDetector,
    build_bank,
    load_bank,
    save_bank,
)
from reconad.models.backbones import BackboneConfig, patch_features
from reconad.models.base import Detector, Method, batched_predict

MAP_NAME = "knn"


class Config(Section):
    """The ``patchcore`` block."""

    input: InputConfig
    network: BackboneConfig
    bank: BankConfig
    score: KnnScoreConfig


class PatchCore(Method):
    """The PatchCore family: a frozen feature extractor and a memory bank, no training."""

    family = "patchcore"
    Config = Config

    def input_settings(self) -> InputConfig:
        return self.config.input

    def build(self) -> keras.Model:
        """The frozen patch-feature extractor ``(B, H, W, C)`` to ``(B, H/s, W/s, c)``."""
        network = self.config.network
        backbone = network.build(self.channels, self.family)
        backbone.trainable = False
        return patch_features(backbone, network.stride, network.aggregate)

    def check_image_size(self, size: int) -> None:
        self.config.network.check_image_size(size, self.family)

    def after_training(self, model: keras.Model | None, data: CategoryData, out_dir: Path) -> None:
        """The features of every training image, thinned to a coreset, as the bank."""
        features = batched_predict(model, data.train, self.params.score.batch_size)
        bank = self.config.bank.thinned(build_bank(features), self.params.seed)
        save_bank(Path(out_dir) / MEMORY_BANK_FILE, bank)

    def load_detector(self, model: keras.Model | None, model_dir: Path) -> Detector:
        return MemoryBankDetector(
            model,
            load_bank(Path(model_dir) / MEMORY_BANK_FILE),
            MAP_NAME,
            self.config.score,
            self.image_size,
            self.params.score.batch_size,
        )
