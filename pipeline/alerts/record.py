"""The alert record: one flagged part as sent to a remote receiver, evidence crop included.

An :class:`Alert` is built from an :class:`~pipeline.types.AnomalyEvent` and serialised to one JSON
object (the webhook body and the MQTT payload are the same bytes)::

    {"schema": 1, "alert_id": "6f1c...", "event": "part_flagged", "stream": "line1", "track_id": 7,
     "frame_index": 412, "timestamp": 20.6, "raised_at": 1732260000.25, "score": 41.2, "threshold": 39.5,
     "frames_scored": 4, "xyxy": [93.6, 386.2, 114.5, 419.0],
     "evidence": {"path": "runs/latest/evidence/track000007_frame0000412.png", "jpeg_base64": "/9j/4AAQ..."}}

With ``[gallery]`` on, the part's identity across cameras comes too: ``"global_id": 1000000003, "name": null``
(``name``: the enrolled name it matched). Without it the two keys are absent.

``alert_id`` is the same for every delivery of one flagged part, and for every sink of one run, so a
receiver that gets an alert twice (a retry after a lost acknowledgement) can drop the copy.
``timestamp`` is the capture time of the frame (media position for files, Unix time for live sources);
``raised_at`` is the Unix time the pipeline flagged the part. ``jpeg_base64`` is the evidence crop
re-encoded as JPEG, ``""`` when no crop was saved or it could not be read.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pipeline.types import AnomalyEvent

log = logging.getLogger(__name__)

SCHEMA = 1
# uuid5 namespace of alert ids; any fixed UUID works. This one is uuid5(NAMESPACE_URL, "siamstream:alert").
_ALERT_NAMESPACE = uuid.UUID("32d067d4-e7ce-5689-886e-7edcc8689745")


class AlertRecordError(ValueError):
    """An alert record (built in memory or read back from JSON) is malformed; the message says what and why."""


def alert_id_for(event: AnomalyEvent, run_id: str) -> str:
    """A stable id for one flagged part of one run: the same for every retry and every sink.

    Track ids restart at 1 with every run, so the run's own random id is part of the name.
    """
    name = f"{run_id}/{event.stream}/{event.track_id}/{event.frame_index}"
    return str(uuid.uuid5(_ALERT_NAMESPACE, name))


def evidence_jpeg(path: str, quality: int = 90) -> bytes:
    """The image at ``path`` re-encoded as JPEG; ``b""`` (and a warning) when there is none or it cannot be read.

    A missing crop is reported as missing, never replaced by a made-up image.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"evidence_jpeg: quality must be in 1..100, got {quality}")
    if not path:
        return b""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        log.warning("evidence crop %s could not be read; the alert goes without it", path)
        return b""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        log.warning("evidence crop %s could not be encoded as JPEG; the alert goes without it", path)
        return b""
    return np.asarray(buf, np.uint8).tobytes()


def _require(cond: bool, what: str, expected: str, actual: object) -> None:
    if not cond:
        raise AlertRecordError(f"Alert: {what} must be {expected}, got {actual!r}")


@dataclass(frozen=True)
class Alert:
    """One flagged part, ready to send.

    Attributes:
        alert_id: unique per flagged part and run (see :func:`alert_id_for`); receivers de-duplicate on it.
        stream: the ``[output] stream_name`` of the run.
        track_id: the part's track id (unique within one run), >= 1.
        frame_index: frame in which the part was flagged, >= 0.
        timestamp: capture time of that frame, seconds.
        raised_at: Unix time the part was flagged, seconds.
        score: the part's anomaly score (k-NN distance); above ``threshold``.
        threshold: the bank's calibrated threshold.
        frames_scored: frames whose scores make up ``score``.
        xyxy: the part's box in that frame, pixels.
        evidence_path: where the evidence crop was saved on the sender's disk, ``""`` when none.
        evidence_jpeg: the crop as JPEG bytes, ``b""`` when none.
        global_id: the part's identity across cameras (``[gallery]``), ``None`` when it has none.
        name: the enrolled name that identity matched, ``None`` when none.
    """

    alert_id: str
    stream: str
    track_id: int
    frame_index: int
    timestamp: float
    raised_at: float
    score: float
    threshold: float
    frames_scored: int
    xyxy: tuple[float, float, float, float]
    evidence_path: str = ""
    evidence_jpeg: bytes = b""
    global_id: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        _require(isinstance(self.alert_id, str) and bool(self.alert_id), "alert_id", "a non-empty string",
                 self.alert_id)
        _require(isinstance(self.stream, str), "stream", "a string", self.stream)
        _require(self.track_id >= 1, "track_id", ">= 1", self.track_id)
        _require(self.frame_index >= 0, "frame_index", ">= 0", self.frame_index)
        _require(self.frames_scored >= 0, "frames_scored", ">= 0", self.frames_scored)
        for name in ("timestamp", "raised_at", "score", "threshold"):
            value = getattr(self, name)
            _require(isinstance(value, (int, float)) and math.isfinite(value), name, "a finite number", value)
        _require(len(self.xyxy) == 4, "xyxy", "4 numbers (x1, y1, x2, y2)", self.xyxy)
        object.__setattr__(self, "xyxy", tuple(float(v) for v in self.xyxy))
        _require(isinstance(self.evidence_jpeg, bytes), "evidence_jpeg", "bytes", type(self.evidence_jpeg).__name__)
        if self.evidence_jpeg:
            _require(self.evidence_jpeg[:2] == b"\xff\xd8", "evidence_jpeg", "JPEG data (starting FF D8)",
                     self.evidence_jpeg[:2])

    @classmethod
    def from_event(cls, event: AnomalyEvent, run_id: str, raised_at: float, jpeg_quality: int = 90) -> Alert:
        """The alert for ``event``; reads and re-encodes its evidence crop (a few ms: call it off the hot path)."""
        return cls(alert_id_for(event, run_id), event.stream, event.track_id, event.frame_index, event.timestamp,
                   raised_at, event.score, event.threshold, event.frames_scored, event.xyxy, event.evidence,
                   evidence_jpeg(event.evidence, jpeg_quality), event.global_id, event.name)

    def to_json(self) -> dict[str, Any]:
        """The JSON object described in the module docstring."""
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "alert_id": self.alert_id,
            "event": "part_flagged",
            "stream": self.stream,
            "track_id": self.track_id,
            "frame_index": self.frame_index,
            "timestamp": round(self.timestamp, 6),
            "raised_at": round(self.raised_at, 6),
            "score": round(self.score, 6),
            "threshold": round(self.threshold, 6),
            "frames_scored": self.frames_scored,
            "xyxy": [round(v, 2) for v in self.xyxy],
            "evidence": {"path": self.evidence_path,
                         "jpeg_base64": base64.b64encode(self.evidence_jpeg).decode("ascii")},
        }
        if self.global_id is not None:
            out.update(global_id=self.global_id, name=self.name)
        return out

    def to_bytes(self) -> bytes:
        """UTF-8 JSON: the webhook body, the MQTT payload and the spool file's content."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, obj: object) -> Alert:
        """Parse what :meth:`to_json` wrote (a receiver or the spool reading it back).

        Raises:
            AlertRecordError: not an object of schema 1, or a field is missing or of the wrong type.
        """
        if not isinstance(obj, dict):
            raise AlertRecordError(f"Alert: expected a JSON object, got {type(obj).__name__}")
        if obj.get("schema") != SCHEMA:
            raise AlertRecordError(f"Alert: expected schema {SCHEMA}, got {obj.get('schema')!r}")
        try:
            fields = (str(obj["alert_id"]), str(obj["stream"]), int(obj["track_id"]), int(obj["frame_index"]),
                      float(obj["timestamp"]), float(obj["raised_at"]), float(obj["score"]),
                      float(obj["threshold"]), int(obj["frames_scored"]), tuple(float(v) for v in obj["xyxy"]))
            evidence = obj["evidence"]
            jpeg = base64.b64decode(evidence["jpeg_base64"], validate=True)
            gid, name = obj.get("global_id"), obj.get("name")
            return cls(*fields, str(evidence["path"]), jpeg,  # type: ignore[arg-type]
                       None if gid is None else int(gid), None if name is None else str(name))
        except KeyError as exc:
            raise AlertRecordError(f"Alert: missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError, binascii.Error) as exc:
            if isinstance(exc, AlertRecordError):
                raise
            raise AlertRecordError(f"Alert: malformed field ({exc})") from None

    @classmethod
    def from_bytes(cls, data: bytes) -> Alert:
        """Parse :meth:`to_bytes` output. Raises :class:`AlertRecordError` on anything else."""
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AlertRecordError(f"Alert: not UTF-8 JSON ({exc})") from None
        return cls.from_json(obj)
