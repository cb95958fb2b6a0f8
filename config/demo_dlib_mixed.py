"""Demo, mixed precision on dlib's ResNet-29: W4A4 (demo_dlib_w4a4.py) except 8 bits for the stem convolution,
whose input is the image, and the embedding layer (first and last layer at 8 bits, as in ImageNet 4-bit work)."""
_base_ = "demo_dlib_w4a4.py"

layer_bits = {"conv1": [8, 8], "fc": [8, 8]}
output = "work_dirs/demo_dlib_mixed"
