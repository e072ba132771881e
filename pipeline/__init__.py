"""siamstream's stream pipeline: sources, detection, Siamese encoder runtime, tracking, anomaly, sinks."""
