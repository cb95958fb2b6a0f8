"""Demo, mixed precision: W4A4 (demo_mbf_w4a4.py) except 8 bits where 4 hurt most on their own: the
stem (conv1, conv2_*, the first bottleneck, whose inputs include the image) and the embedding head.
"""
_base_ = "demo_mbf_w4a4.py"

layer_bits = {"conv1.*": [8, 8], "conv2_*": [8, 8], "stages.0.0.*": [8, 8],
              "gdc.*": [8, 8], "linear.*": [8, 8], "features.*": [8, 8]}
output = "work_dirs/demo_mbf_mixed"
