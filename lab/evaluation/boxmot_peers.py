"""boxmot's trackers as peers, run from a separate Python environment that this module sets up or finds.

boxmot 25.0.0 cannot be installed beside siamstream: it requires ``opencv-python<5`` (a second ``cv2`` over the
project's OpenCV 5) and ``pandas<3``. So its trackers run in their own virtual environment, through the
standalone script :mod:`lab.evaluation.boxmot_runner`, on the same detections as every other tracker; their
rows come back and are scored here by the same TrackEval code.

The environment is, in order: ``$SIAMSTREAM_BOXMOT_PYTHON`` (an interpreter that can ``import boxmot``), or
``PEERS_DIR/boxmot-25.0.0`` (``PEERS_DIR`` = ``[encoder] cache_dir``/peers), created on first use with
``python -m venv`` and ``pip install`` of :data:`REQUIREMENTS` (about a minute and 1.8 GB; torch 2.13.0 goes in
first, so boxmot does not pull a newer one: where pip's index serves the CUDA build of torch, that is what the
environment gets, as it is what ``pip install torch`` gets there). A failed set-up raises
:class:`PeerUnavailableError` with the commands to run by hand and the end of pip's log.

The motion trackers run without ReID (boxmot's ReID models download their weights: not offline): ByteTrack,
OC-SORT, BoT-SORT and BoostTrack with their defaults, ``frame_rate`` from ``seqinfo.ini`` where they take one. The
appearance trackers (:data:`APPEARANCE_TRACKERS`: BoT-SORT with ReID, StrongSORT, Deep OC-SORT) are given the
embeddings of siamstream's re-identification model for every detection (:func:`embed_detections`), the same
vectors siamstream's tracker compares, and load no model of their own.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lab.evaluation.mot_peers import EncoderEmbedder, PeerRun, PeerUnavailableError
from lab.evaluation.motchallenge import MotSequence
from pipeline.detect.motchallenge import MotDetectionFile

log = logging.getLogger(__name__)

VERSION = "25.0.0"
REQUIREMENTS: tuple[tuple[str, ...], ...] = (("torch==2.13.0",), ("torchvision==0.28.0", f"boxmot=={VERSION}"))
TRACKERS: tuple[str, ...] = ("bytetrack", "ocsort", "botsort", "boosttrack")
APPEARANCE_TRACKERS: tuple[str, ...] = ("botsort-reid", "strongsort", "deepocsort")
ENV_VAR = "SIAMSTREAM_BOXMOT_PYTHON"
RUNNER = Path(__file__).with_name("boxmot_runner.py")
READY = ".siamstream-ready"


def _child_env() -> dict[str, str]:
    """The environment for boxmot's interpreter: without variables that would mix siamstream's packages in."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def _can_import(python: Path) -> bool:
    try:
        proc = subprocess.run([str(python), "-c", "import boxmot, torch, cv2"], capture_output=True, timeout=300,
                              env=_child_env())
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _manual_steps(env: Path) -> str:
    installs = " && ".join(f"{env}/bin/pip install {' '.join(group)}" for group in REQUIREMENTS)
    return f"{sys.executable} -m venv {env} && {installs}; or set {ENV_VAR} to a Python that can import boxmot"


def peers_dir(cache_dir: str | Path) -> Path:
    """Where peer environments live: ``[encoder] cache_dir``/peers."""
    return Path(cache_dir).expanduser() / "peers"


def boxmot_python(peers_dir: str | Path, setup: bool = True) -> Path:
    """The interpreter that runs boxmot (see the module docstring), set up when ``setup`` and missing.

    Raises:
        PeerUnavailableError: none is found and ``setup`` is off, or the set-up failed.
    """
    given = os.environ.get(ENV_VAR)
    if given:
        python = Path(given)
        if not _can_import(python):
            raise PeerUnavailableError(f"{ENV_VAR}={given}: that interpreter cannot import boxmot, torch and cv2; "
                                       f"point it at boxmot's environment or unset it to let siamstream build one")
        return python
    env = Path(peers_dir).expanduser() / f"boxmot-{VERSION}"
    python = env / "bin" / "python"
    if (env / READY).is_file() and python.is_file():
        return python
    if not setup:
        raise PeerUnavailableError(f"the boxmot peers need their own environment, not set up at {env}: "
                                   f"{_manual_steps(env)}")
    log.info("boxmot peers: setting up their environment in %s (once; about a minute, 1.8 GB)", env)
    started = time.perf_counter()
    try:
        env.parent.mkdir(parents=True, exist_ok=True)
        steps = [[sys.executable, "-m", "venv", "--clear", str(env)],
                 [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
                 *[[str(python), "-m", "pip", "install", "--quiet", *group] for group in REQUIREMENTS]]
        for cmd in steps:
            log.info("boxmot peers: %s", " ".join(cmd[1:] if cmd[0] == sys.executable else ["pip", *cmd[3:]]))
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=_child_env())
            if proc.returncode != 0:
                tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
                raise PeerUnavailableError(f"setting up the boxmot peers' environment failed at "
                                           f"`{' '.join(cmd)}`:\n{tail}\nFix the cause, or do it by hand: "
                                           f"{_manual_steps(env)}")
    except OSError as exc:
        raise PeerUnavailableError(f"cannot set up the boxmot peers' environment in {env} ({exc}); set "
                                   f"[encoder] cache_dir to a writable folder, or {ENV_VAR}") from None
    except subprocess.TimeoutExpired:
        raise PeerUnavailableError(f"setting up the boxmot peers' environment in {env} took over 30 minutes; "
                                   f"{_manual_steps(env)}") from None
    if not _can_import(python):
        raise PeerUnavailableError(f"{env}: boxmot was installed but cannot be imported; {_manual_steps(env)}")
    (env / READY).write_text(VERSION)
    log.info("boxmot peers: environment ready in %.0f s", time.perf_counter() - started)
    return python


def detection_array(det: MotDetectionFile, length: int) -> np.ndarray:
    """``(N, 6)`` float64 ``frame, x, y, w, h, score`` of frames ``1..length``: what every tracker is given."""
    rows = []
    for t in range(1, length + 1):
        tlwh, score = det.frame_rows(t)
        if len(score):
            block = np.empty((len(score), 6), np.float64)
            block[:, 0] = t
            block[:, 1:5] = tlwh
            block[:, 5] = score
            rows.append(block)
    return np.concatenate(rows) if rows else np.zeros((0, 6), np.float64)


def embed_detections(det: MotDetectionFile, seq: MotSequence, embedder: EncoderEmbedder) -> np.ndarray:
    """``(N, D)`` float32: the embedding of every row of :func:`detection_array`, in its order, from the decoded
    frames (the box crops siamstream's tracker embeds)."""
    from pipeline.config import SourceConfig
    from pipeline.sources import open_source

    out = []
    source = open_source(seq.frames_uri, SourceConfig())
    try:
        for frame in source:
            t = frame.index + 1
            if t > seq.length:
                break
            tlwh, _score = det.frame_rows(t)
            if len(tlwh):
                out.append(embedder.embed(frame.image, tlwh)[0])
    finally:
        source.close()
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, embedder.encoder.embedding_dim),
                                                                       np.float32)


def run_boxmot(det: MotDetectionFile, seq: MotSequence, python: Path,
               trackers: tuple[str, ...] = TRACKERS, embeddings: np.ndarray | None = None) -> list[PeerRun]:
    """Run boxmot's ``trackers`` on ``seq`` with ``det``'s detections in boxmot's environment (``python``); one
    :class:`PeerRun` each, named ``boxmot-NAME``, with the time inside the trackers' ``update()`` calls. The
    appearance trackers need ``embeddings`` (:func:`embed_detections`).

    Raises:
        PeerUnavailableError: the runner failed (its last lines are in the message).
    """
    with tempfile.TemporaryDirectory(prefix="siamstream-boxmot-") as tmp:
        work = Path(tmp)
        dets = detection_array(det, seq.length)
        np.save(work / "dets.npy", dets)
        extra = []
        if embeddings is not None:
            if len(embeddings) != len(dets):
                raise ValueError(f"{len(embeddings)} embeddings for {len(dets)} detections of {seq.name}")
            np.save(work / "embs.npy", np.asarray(embeddings, np.float32))
            extra = ["--embs", str(work / "embs.npy")]
        frames = seq.frames_uri
        if Path(frames).is_dir():  # the images in the order siamstream's own image-folder source reads them
            from pipeline.sources import folder_images

            (work / "frames.txt").write_text("".join(f"{p.resolve()}\n" for p in folder_images(Path(frames))))
            frames = f"@{work / 'frames.txt'}"
        elif Path(frames).exists():
            frames = str(Path(frames).resolve())
        cmd = [str(python), str(RUNNER), "--dets", str(work / "dets.npy"), "--frames", frames,
               "--length", str(seq.length), "--fps", str(seq.frame_rate), "--trackers", ",".join(trackers),
               "--out", str(work / "out"), *extra]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=_child_env())
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PeerUnavailableError(f"the boxmot runner could not run on {seq.name} ({exc}); check {python}, "
                                       f"or set {ENV_VAR}") from None
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            raise PeerUnavailableError(f"the boxmot runner failed on {seq.name} (exit {proc.returncode}):\n{tail}")
        timing = json.loads((work / "out" / "timing.json").read_text())
        runs = []
        for name in trackers:
            rows = np.load(work / "out" / f"{name}.npy").astype(np.float64).reshape(-1, 7)
            t = timing[name]
            if int(t["frames"]) != seq.length:
                log.warning("%s: boxmot read %d frames, seqinfo.ini says %d", seq.frames_uri, t["frames"],
                            seq.length)
            runs.append(PeerRun(f"boxmot-{name}", rows, int(t["frames"]), float(t["seconds"])))
    return runs
