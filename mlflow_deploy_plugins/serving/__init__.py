"""The serving runtime: onnxruntime, numpy and the HTTP stack only (never mlflow or pandas)."""
