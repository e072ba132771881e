"""Anomaly stage: FAISS bank of known-good embeddings (bank.py), thresholds (calibrate.py), verdicts (inspector.py)."""
