"""r100, 4-bit weights and activations, QuantFace real-data setting."""
_base_ = "r100_real.py"

weight_bits = 4
act_bits = 4
output = "work_dirs/r100_w4a4_real"
