"""The lab: evaluation (metrics, reference implementations, peers) and benchmarks (``siamstream bench NAME``).

Nothing in :mod:`pipeline` imports from here: ``run``, ``bank`` and ``demo`` work with the lab's extra
dependencies absent (``pip install 'siamstream[lab]'`` adds them).
"""
