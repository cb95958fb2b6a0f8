"""Demo (the README's first command): the pretrained MobileFaceNet from the assets, quantized to W8A8 and
distilled on DCGAN faces generated on the fly, sized for a laptop CPU (under 10 minutes on 2 cores).
"""
network = "mfn_tflite"        # the converted pretrained MobileFaceNet (python -m tools.fetch_assets)
embedding_size = 192
teacher = "{assets_dir}/mobilefacenet_tflite.pt"
data_source = "generator"
bn_mode = "frozen"            # BatchNorm is folded into its convolutions: nothing to update
equalize = True               # folded BatchNorm leaves channels of very different ranges: equalise them first
bias_correction = True        # observe ranges on the first batches, correct the biases, then distil
float_conv_inputs = True      # convs a PReLU reads run in float on onnxruntime: leave their inputs float too (W8A8+fci)
weight_bits = 8
act_bits = 8
act_observer = "lsq"          # observed ranges, then learned with the weights
lsq_init = "percentile"       # initial ranges clip the rarest 1e-6 of values (min/max ranges: real photos 0.9976 -> 0.9982)
act_percentile = 99.9999
calibration_batches = 20      # batches observed before training (then frozen: no observing while training)
observer_steps = 0
batch_size = 32
num_steps = 120               # about 3 s a step on 2 idle CPU cores
optimizer = "adamw"           # Adam's steps do not depend on the loss's scale (the mse loss is tiny)
lr = 1e-5                     # small: the student starts next to the teacher; larger rates fit the generated faces only
scheduler = "cosine"
save_every = 40
eval_targets = []
output = "work_dirs/demo_mbf_w8a8"
