"""Export stage (``projgan.export``): ONNX fp32/fp16, TensorRT plan, parity certificate, Triton repo."""
