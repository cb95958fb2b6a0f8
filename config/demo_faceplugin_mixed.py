"""Demo, mixed precision on faceplugin's MobileFaceNet: W4A4 (demo_faceplugin_w4a4.py) except 8 bits where the
TFLite MobileFaceNet's mixed demo (demo_mbf_mixed.py) keeps them: the stem (the first convolution and its
depthwise convolution), the first bottleneck, and the embedding head (the global depthwise and linear layers)."""
_base_ = "demo_faceplugin_w4a4.py"

layer_bits = {f"layers.conv{i}": [8, 8] for i in (0, 2, 4, 6, 8, 93, 94)}
output = "work_dirs/demo_faceplugin_mixed"
