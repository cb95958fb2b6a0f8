"""MobileFaceNet teacher (arcface_torch ``mbf``, scale 2, 512-D), QuantFace real-data setting.

The ``mbf_w*a*_real.py`` files add bit widths.  For a MobileFaceNet checkpoint from before 2021-07
(scale 1) add ``network_kwargs = {"scale": 1}`` (or ``network_kwargs='{"scale": 1}'`` on the command line).
"""
_base_ = "quantface_real.py"

network = "mbf"
teacher = "pretrained/ms1mv2_arcface_mbf/backbone.pth"  # arcface_torch backbone.pth (user supplies)
