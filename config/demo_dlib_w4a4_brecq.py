"""Demo at W4A4 on dlib's ResNet-29 with block reconstruction before distillation (demo_dlib_w4a4.py plus
BRECQ/QDrop: 200 steps per block on 512 faces; bias correction off, which reconstruction replaces)."""
_base_ = "demo_dlib_w4a4.py"

bias_correction = False
reconstruct_iters = 200
reconstruct_images = 512
output = "work_dirs/demo_dlib_w4a4_brecq"
