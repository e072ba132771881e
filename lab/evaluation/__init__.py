"""Evaluation on real benchmark data: encoders (one-shot, verification) and trackers (MOTChallenge)."""
