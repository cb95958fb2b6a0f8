"""r50, 8-bit weights and activations, QuantFace real-data setting."""
_base_ = "r50_real.py"

weight_bits = 8
act_bits = 8
output = "work_dirs/r50_w8a8_real"
