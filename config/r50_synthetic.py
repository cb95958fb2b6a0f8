"""iResNet-50 (arcface_torch ``r50``, 512-D): the exportable student, distilled on generated faces."""
_base_ = "synthetic.py"

network = "r50"
teacher = "pretrained/ms1mv2_arcface_r50/backbone.pth"  # your arcface_torch backbone.pth (or teacher=PATH)
