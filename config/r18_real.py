"""iResNet-18 (arcface_torch ``r18``, 512-D): the exportable student, distilled on a RecordIO set."""
_base_ = "real.py"

network = "r18"
teacher = "pretrained/ms1mv2_arcface_r18/backbone.pth"  # your arcface_torch backbone.pth (or teacher=PATH)
