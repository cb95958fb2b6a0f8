"""VarGFaceNet (arcface_torch ``vargfacenet``, 512-D): the exportable student, distilled on a RecordIO set."""
_base_ = "real.py"

network = "vargfacenet"
teacher = "pretrained/ms1mv2_arcface_vargfacenet/backbone.pth"  # your arcface_torch backbone.pth (or teacher=PATH)
