"""iResNet-200 (arcface_torch ``r200``, 512-D): the exportable student, distilled on generated faces."""
_base_ = "synthetic.py"

network = "r200"
teacher = "pretrained/ms1mv2_arcface_r200/backbone.pth"  # your arcface_torch backbone.pth (or teacher=PATH)
