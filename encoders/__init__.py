"""Siamese encoders: backbones, twin model, training, ONNX export with a parity guarantee."""
