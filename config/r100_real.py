"""iResNet-100 (arcface_torch ``r100``, 512-D): the exportable student, distilled on a RecordIO set."""
_base_ = "real.py"

network = "r100"
teacher = "pretrained/ms1mv2_arcface_r100/backbone.pth"  # your arcface_torch backbone.pth (or teacher=PATH)
