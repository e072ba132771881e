"""Which errors are the user's to fix: their message is complete, reported as one line with exit code 2."""

from __future__ import annotations

import sys

# Errors whose message is complete: reported as one line, no traceback. Named, not imported: `run` loads none of
# the training, evaluation and benchmark modules (an error class whose module was never imported was never raised).
USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("pipeline.config", "ConfigError"), ("pipeline.sources", "SourceError"), ("pipeline.sinks", "SinkError"),
    ("pipeline.encoder", "EncoderContractError"), ("pipeline.anomaly.bank_meta", "BankError"),
    ("pipeline.metrics", "MetricsError"), ("pipeline.tracking.appearance", "AppearanceError"),
    ("pipeline.detect.onnx_detector", "DetectorContractError"), ("pipeline.detect.motchallenge", "MotFileError"),
    ("pipeline.identity", "GalleryNamesError"),
    ("encoders.backbones", "BackboneError"), ("encoders.export", "ExportParityError"), ("encoders.train", "TrainError"),
    ("encoders.quantize", "QuantizeError"), ("encoders.data", "DataError"),
    ("encoders.evaluate", "EvaluationError"), ("encoders.reid_data", "ReidDataError"), ("encoders.adapt", "AdaptError"),
    ("lab.benchmarks.data", "BenchDataError"), ("pipeline.anomaly.manifest", "ManifestError"),
    ("lab.evaluation.mot_metrics", "MotEvaluationError"), ("lab.evaluation.motchallenge", "MotSequenceError"),
    ("lab.evaluation.mot_peers", "PeerUnavailableError"),
)


def user_errors() -> tuple[type[BaseException], ...]:
    """The classes of :data:`USER_ERRORS` whose modules are loaded."""
    loaded = (getattr(sys.modules[m], name) for m, name in USER_ERRORS if m in sys.modules)
    return tuple(cls for cls in loaded if isinstance(cls, type))
