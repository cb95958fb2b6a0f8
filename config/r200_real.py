"""iResNet-200 (arcface_torch ``r200``, 512-D): the exportable student, distilled on a RecordIO set."""
_base_ = "real.py"

network = "r200"
teacher = "pretrained/ms1mv2_arcface_r200/backbone.pth"  # your arcface_torch backbone.pth (or teacher=PATH)
