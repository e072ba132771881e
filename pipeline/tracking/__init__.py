"""Multi-object tracking: pure matching maths (matching.py) and the stateful tracker (tracker.py)."""
