"""Deployable students: ONNX export (fp32 or int8 QDQ, ``deploy.onnx_export``), onnxruntime models that
evaluate like backbones (``deploy.onnx_model``) and packed low-bit checkpoints (``deploy.packed``)."""
from deploy.onnx_export import ExportError, export_onnx, to_onnx
from deploy.onnx_model import OnnxModel, OnnxModelError

__all__ = ["ExportError", "OnnxModel", "OnnxModelError", "export_onnx", "to_onnx"]
