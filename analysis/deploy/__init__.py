"""The pruned model out of Prunescope: one ONNX file, verified in ONNX Runtime against PyTorch, with its size and
latency next to the dense model's."""
