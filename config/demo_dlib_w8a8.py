"""Demo on dlib's ResNet-29 (PyPI face-recognition-models, no npm needed): the pretrained residual network
quantized to W8A8 and distilled on DCGAN faces re-framed onto dlib's 150x150 chip (the mbf demo's recipe)."""
_base_ = "demo_mbf_w8a8.py"

network = "dlib_resnet"       # the converted dlib model (python -m tools.fetch_assets)
embedding_size = 128
teacher = "{assets_dir}/dlib_resnet.pt"
output = "work_dirs/demo_dlib_w8a8"
lsq_init = "minmax"           # the MobileFaceNets' 99.9999th percentile changes nothing on the real photos here and costs the johns 0.0004
float_conv_inputs = False     # a ReLU network: no conv is read by a PReLU
