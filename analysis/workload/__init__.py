"""Specs a user types -> a ``Workload`` (a model in eval mode, an eval set, their shapes): samples, torchvision,
ONNX, user code (only with ``trust_code``), tensor and image data, uploads; every way a file can be wrong is a
one-line ``SpecError``."""
