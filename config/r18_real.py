"""iResNet-18 teacher (arcface_torch ``r18``, 512-D), QuantFace real-data setting.

The ``r18_w*a*_real.py`` files add bit widths.
"""
_base_ = "quantface_real.py"

network = "r18"
teacher = "pretrained/ms1mv2_arcface_r18/backbone.pth"  # arcface_torch backbone.pth (user supplies)
