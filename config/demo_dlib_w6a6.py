"""Demo at W6A6 on dlib's ResNet-29: the dlib W8A8 demo (demo_dlib_w8a8.py) with 6-bit weights and activations."""
_base_ = "demo_dlib_w8a8.py"

weight_bits = 6
act_bits = 6
lsq_init = "percentile"       # below 8 bits, clipping the rarest 0.01% of values beats covering them
act_percentile = 99.99
output = "work_dirs/demo_dlib_w6a6"
