"""Demo at W6A6 on the faceplugin ONNX MobileFaceNet: demo_faceplugin_w8a8.py with 6-bit weights and activations."""
_base_ = "demo_faceplugin_w8a8.py"

weight_bits = 6
act_bits = 6
lsq_init = "percentile"       # below 8 bits, clipping the rarest 0.01% of values beats covering them
act_percentile = 99.99
output = "work_dirs/demo_faceplugin_w6a6"
float_conv_inputs = True      # as the W8A8 demo (W6A6+fci): the convs a PReLU reads run in float on onnxruntime
                              # anyway; calibration only, seed 0: real photos 0.9405 -> 0.9531, johns 0.9609 -> 0.9697
