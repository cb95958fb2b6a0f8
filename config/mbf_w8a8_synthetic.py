"""mbf, 8-bit weights and activations, QuantFace synthetic-data setting."""
_base_ = "mbf_synthetic.py"

weight_bits = 8
act_bits = 8
output = "work_dirs/mbf_w8a8_synthetic"
