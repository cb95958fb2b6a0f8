"""Demo on an ONNX teacher: faceplugin's MobileFaceNet (npm faceplugin-face-recognition-js, a PyTorch-exported
.onnx, taken as it is: backbone onnx_graph), quantized to W8A8 and distilled with the mbf demo's recipe."""
_base_ = "demo_mbf_w8a8.py"

network = "onnx_graph"        # the .onnx graph rebuilt from torch layers (python -m tools.fetch_assets converts it)
embedding_size = 512
teacher = "{assets_dir}/faceplugin_mbf.pt"
output = "work_dirs/demo_faceplugin_w8a8"
