"""Multi-object tracking: pure maths (kalman.py, matching.py, motion.py) and the stateful tracker (tracker.py)."""
