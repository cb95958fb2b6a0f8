"""MobileFaceNet-large (arcface_torch ``mbf_large``, 512-D): the exportable student, distilled on a RecordIO set."""
_base_ = "real.py"

network = "mbf_large"
teacher = "pretrained/ms1mv2_arcface_mbf_large/backbone.pth"  # your arcface_torch backbone.pth (or teacher=PATH)
float_conv_inputs = True      # convs a PReLU reads keep float inputs (onnxruntime runs them in float
                              # anyway): more faithful at 8 and 6 bits on the demos; =false at 4 bits
