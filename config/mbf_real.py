"""MobileFaceNet (arcface_torch ``mbf``, scale 2, 512-D): the exportable student, distilled on a RecordIO set.
A MobileFaceNet checkpoint from before 2021-07 (scale 1) needs ``network_kwargs='{"scale": 1}'``."""
_base_ = "real.py"

network = "mbf"
teacher = "pretrained/ms1mv2_arcface_mbf/backbone.pth"  # your arcface_torch backbone.pth (or teacher=PATH)
float_conv_inputs = True      # convs a PReLU reads keep float inputs (onnxruntime runs them in float
                              # anyway): more faithful at 8 and 6 bits on the demos; =false at 4 bits
