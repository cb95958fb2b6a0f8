"""iResNet-100 teacher (arcface_torch ``r100``, 512-D), QuantFace real-data setting.

The ``r100_w*a*_real.py`` files add bit widths.
"""
_base_ = "quantface_real.py"

network = "r100"
teacher = "pretrained/ms1mv2_arcface_r100/backbone.pth"  # arcface_torch backbone.pth (user supplies)
