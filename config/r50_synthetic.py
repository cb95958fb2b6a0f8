"""iResNet-50 teacher (arcface_torch ``r50``, 512-D), QuantFace synthetic-data setting.

The ``r50_w*a*_synthetic.py`` files add bit widths.
"""
_base_ = "quantface_synthetic.py"

network = "r50"
teacher = "pretrained/ms1mv2_arcface_r50/backbone.pth"  # arcface_torch backbone.pth (user supplies)
