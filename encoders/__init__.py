"""Siamese encoders: backbones, twin model, ONNX export with a parity guarantee."""
