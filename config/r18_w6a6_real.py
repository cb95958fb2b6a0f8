"""r18, 6-bit weights and activations, QuantFace real-data setting."""
_base_ = "r18_real.py"

weight_bits = 6
act_bits = 6
output = "work_dirs/r18_w6a6_real"
