"""The ONNX exporter (installed as ``lmdm_export``): ``lmdm export``, its verification, and hosts outside Python
(export/node/). The runtime that reads an export is ``lmdm_engine.runtime.onnx``."""
