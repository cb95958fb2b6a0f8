"""Demo at W4A4 on dlib's ResNet-29: the dlib W8A8 demo (demo_dlib_w8a8.py) with 4-bit weights and activations."""
_base_ = "demo_dlib_w8a8.py"

weight_bits = 4
act_bits = 4
lsq_init = "percentile"       # below 8 bits, clipping the rarest 0.01% of values beats covering them
act_percentile = 99.99
output = "work_dirs/demo_dlib_w4a4"
