"""mbf, 8-bit weights and activations, QuantFace real-data setting."""
_base_ = "mbf_real.py"

weight_bits = 8
act_bits = 8
output = "work_dirs/mbf_w8a8_real"
