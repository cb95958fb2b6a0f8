"""Demo, mixed precision: W4A4 everywhere except the first convolution and the embedding head at 8 bits."""
_base_ = "demo_mbf_w4a4.py"

layer_bits = {"conv1.*": [8, 8], "gdc.*": [8, 8], "linear.*": [8, 8], "features.*": [8, 8]}
output = "work_dirs/demo_mbf_mixed"
