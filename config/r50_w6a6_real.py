"""r50, 6-bit weights and activations, QuantFace real-data setting."""
_base_ = "r50_real.py"

weight_bits = 6
act_bits = 6
output = "work_dirs/r50_w6a6_real"
