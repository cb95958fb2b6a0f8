"""mbf, 6-bit weights and activations, QuantFace synthetic-data setting."""
_base_ = "mbf_synthetic.py"

weight_bits = 6
act_bits = 6
output = "work_dirs/mbf_w6a6_synthetic"
