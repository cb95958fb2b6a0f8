"""r100, 6-bit weights and activations, QuantFace synthetic-data setting."""
_base_ = "r100_synthetic.py"

weight_bits = 6
act_bits = 6
output = "work_dirs/r100_w6a6_synthetic"
