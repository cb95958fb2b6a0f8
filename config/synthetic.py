"""The recipe: the best exportable student of a float teacher, distilled on faces generated on the fly.

What the demos measured best on three pretrained teachers (docs/results/README.md): every Conv/Linear input
quantized (quant_mode="deploy": the student exports to int8 ONNX and to a packed file), channels equalised,
activation ranges observed on 20 batches from a high percentile, biases corrected, then activation step
sizes learned while the student is distilled with AdamW at a small learning rate from that calibrated start.
A network file (config/<network>_synthetic.py) names the teacher; bit widths are overrides
(``weight_bits=6 act_bits=6``); the output folder follows from the config and the bits.
"""
data_source = "generator"
equalize = True               # one per-tensor range fits every channel after rescaling (exact through PReLU/ReLU)
bias_correction = True        # the calibrated student's biases get back the mean shift quantization caused
act_observer = "lsq"          # observed ranges, then learned with the weights
lsq_init = "percentile"
act_percentile = 0.0          # 0 = by width: 99.9999th percentile at 8-bit activations, 99.99th below
calibration_batches = 20      # batches observed before training (then the ranges are learned, not observed)
observer_steps = 0
bn_mode = "frozen"            # the teacher's BatchNorm statistics stay: the student starts next to the teacher
optimizer = "adamw"           # Adam's steps do not depend on the loss's scale (the mse loss is tiny)
lr = 1e-5                     # small: larger rates fit the generated faces only
scheduler = "cosine"
batch_size = 128
num_steps = 2000              # 256k generated faces at batch 128 (one GPU); the demos measured 120 steps of 32
save_every = 500
