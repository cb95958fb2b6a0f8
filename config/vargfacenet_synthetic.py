"""VarGFaceNet (arcface_torch ``vargfacenet``, 512-D): the exportable student, distilled on generated faces."""
_base_ = "synthetic.py"

network = "vargfacenet"
teacher = "pretrained/ms1mv2_arcface_vargfacenet/backbone.pth"  # your arcface_torch backbone.pth (or teacher=PATH)
