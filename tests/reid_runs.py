"""A re-identification run small enough for a test: Lite0 to stage 2 at 32x16, 4 held-out identities."""

from __future__ import annotations

from encoders.reid_train import ReidTrainConfig

TINY_REID = ReidTrainConfig(stage=2, height=32, width=16, epochs=2, p=4, k=2, pad=2, val_identities=4, val_every=1,
                            num_threads=1, progress_every_s=0)
