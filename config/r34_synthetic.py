"""iResNet-34 (arcface_torch ``r34``, 512-D): the exportable student, distilled on generated faces."""
_base_ = "synthetic.py"

network = "r34"
teacher = "pretrained/ms1mv2_arcface_r34/backbone.pth"  # your arcface_torch backbone.pth (or teacher=PATH)
