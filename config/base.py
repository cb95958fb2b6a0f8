"""Every config field with its default and what it means.  Experiment files override only what differs.

Paths may contain ``{assets_dir}``; it is replaced by the asset cache folder (``tools/fetch_assets.py``).
"""
import os

# ---- models -------------------------------------------------------------------------------------
network = "r50"               # teacher backbone name for backbones.get_model (r18 r34 r50 r100 r200 mbf mbf_large vargfacenet mfn_tflite dlib_resnet; onnx_graph = an .onnx teacher as it is)
network_kwargs = {}           # extra constructor keywords for the teacher (e.g. {"scale": 1} for pre-2021 mbf)
embedding_size = 512          # teacher embedding dimension (num_features)
teacher = ""                  # teacher: arcface_torch backbone.pth/model.pt, this project's checkpoint, or a face model .onnx
onnx_input_spec = {}          # an .onnx teacher's input (ONNX files do not record it): keys size mean std channels alignment; {} = ArcFace (112, RGB, 127.5/127.5)
image_size = None             # network input side; None = the model's declared input spec (a different value is an error)
input_mean = None             # pixel mean of (x - mean) / std; None = the model's declared spec (127.5 for every backbone here); a different value is an error
input_std = None              # pixel std of (x - mean) / std; None = the model's declared spec (127.5 insightface, 128 mfn_tflite); a different value is an error
student_network = ""          # student backbone; "" = same architecture as the teacher, initialised from it
student_network_kwargs = {}   # constructor keywords for a different student architecture
student_embedding_size = 0    # 0 = same as embedding_size; differing sizes get a learned projection in the loss
student_init = ""             # checkpoint for a different student architecture; "" = random init
student_from = ""             # a quantized student (student_final.pt) to go on distilling, instead of quantizing a new one
generations = 1               # recursive distillation (VarGFaceNet): N > 1 trains <output>/gen1..genN, each from the previous one's student

# ---- quantization -------------------------------------------------------------------------------
weight_bits = 8               # weight bit width, 2-8 (16 or 32 = keep float)
act_bits = 8                  # activation bit width, 2-8 (16 or 32 = keep float)
quant_mode = "deploy"         # "deploy": every Conv/Linear input quantized (maps onto int8 QDQ kernels); "quantface": the paper's placement
weight_symmetric = None       # per-channel weights: True symmetric, False asymmetric min/max; None = the mode's own (deploy True, quantface False)
weight_observer = "minmax"    # weight range: minmax (current per-channel min/max every step) | lsq (learned step size, min/max init)
act_observer = "minmax"       # activation range estimator: minmax | ema | percentile | lsq (learned step size)
lsq_init = "minmax"           # act_observer="lsq": estimator of the initial ranges that are then learned (minmax | ema | percentile)
act_percentile = 99.99        # percentile for act_observer="percentile" (or lsq_init="percentile"); 0 = by width: 99.9999 at 8 bits, 99.99 below
ema_momentum = 0.01           # update rate for act_observer="ema"
calibration_batches = 0       # batches whose activation ranges are observed (and frozen) before training; 0 = none
observer_steps = 300          # training steps that (go on) observing activation ranges, then they are frozen; 0 = none
layer_bits = {}               # mixed precision: {"module-name glob": [weight_bits, act_bits]}, e.g. {"conv1": [8, 8], "fc": [8, 8]}
size_budget = 0.0             # > 0: weight widths per layer from the teacher's measured sensitivity so the weights fit this share of the fp32 size (e.g. 0.15; docs/quantization.md); 0 = off
bias_correction = False       # after calibration (needs calibration_batches >= 1), give each quantized layer's bias back the mean output shift quantization caused
equalize = False              # rescale channels between adjacent layers (exact through PReLU/ReLU) so per-tensor activation ranges fit every channel; uses the first training batches
quantize_prelu_input = False  # quant_mode="deploy": quantize each PReLU's input too, so the conv before it runs as an integer kernel (the PReLU itself in float between them)
float_conv_inputs = False     # quant_mode="deploy" (PReLU inputs float): leave the inputs of the convs a PReLU reads unquantized too; onnxruntime runs those convs in float anyway, so this is faster and more faithful, but those activations are not act_bits (label "+fci")
share_input_quantizers = True  # quant_mode="deploy": layers reading one tensor (a block's expansion conv and residual sum) read it through one quantizer: one QuantizeLinear in the int8 file, so the conv producing it runs as an integer kernel
bn_mode = "train"             # BatchNorm in the student: train (QuantFace) | frozen (statistics fixed) | fold (into the conv where exact)

# ---- block reconstruction (BRECQ / QDrop: after calibration, before distillation) -----------------
reconstruct_iters = 0         # Adam steps per block fitting weight rounding (AdaRound) and activation step sizes to the float block's output; 0 = off
reconstruct_images = 1024     # calibration faces the blocks are fitted on (the first of the calibration stream)
reconstruct_batch_size = 16   # images per reconstruction step
reconstruct_min_layers = 2    # blocks are the pieces between single-tensor cuts of the traced graph, merged until each holds this many Conv/Linear layers
reconstruct_drop = 0.5        # QDrop: share of activation values (and block-input values) left unquantized while fitting; 0 = BRECQ
reconstruct_round_weight = 0.01  # weight of AdaRound's regulariser that drives every rounding to up or down
reconstruct_round_lr = 1e-3   # Adam learning rate of the rounding variables
reconstruct_scale_lr = 4e-5   # Adam learning rate of the activation step sizes

# ---- data ---------------------------------------------------------------------------------------
data_source = "generator"     # generator (faces made on the fly) | folder (image folder) | recordio (train.rec + train.idx) | bn_stats (made from the teacher's BatchNorm statistics) | noise (Gaussian pixels: the no-data baseline)
data_path = ""                # folder of images, or folder holding train.rec/train.idx
generator_weights = "{assets_dir}/gan_face_generate/weights.tar"  # DCGAN generator for data_source="generator"
samples_per_epoch = 528000    # generated faces per epoch (QuantFace used 528k synthetic images; bn_stats: images made, e.g. 2048)
bn_stats_steps = 500          # data_source="bn_stats": Adam steps per chunk of images (ZeroQ: 500)
bn_stats_lr = 0.1             # data_source="bn_stats": Adam learning rate on the pixels (normalised units)
random_flip = True            # random horizontal flip of training images
skip_unreadable_images = False  # folder / recordio: leave out an image that cannot be decoded (counted, reported at the end) instead of stopping with its name
batch_size = 128              # images per GPU (per process)
seed = 0                      # random seed (data order, generator latents, init)

# ---- optimisation -------------------------------------------------------------------------------
lr = 0.0                      # learning rate; 0 = 0.1 x total batch / 512 (QuantFace)
optimizer = "sgd"             # sgd | adamw
momentum = 0.9                # SGD momentum
nesterov = True               # SGD Nesterov momentum
weight_decay = 5e-4           # weight decay
quantizer_lr_scale = 1.0      # learning rate of learned quantizer step sizes / zero points, as a multiple of lr
grad_clip = 5.0               # gradient-norm clip; 0 = off
loss = "mse"                  # mse (L2-normalised embeddings, QuantFace) | cosine | angular
feature_layers = []           # also distil these modules' outputs (fnmatch globs on module names, e.g. ["layer?"]); [] = embedding only
feature_weight = 1.0          # weight of the feature loss (mean relative squared error over feature_layers)
margin_head = ""              # labelled data (recordio): "arcface" or "cosface" margin softmax over the identities, added to the distillation loss; "" = none
num_classes = 0               # margin_head: number of identities (classes 0..num_classes-1)
margin_s = 64.0               # margin_head: logit scale (arcface_torch: 64)
margin_m = 0.5                # margin_head: margin (ArcFace 0.5 rad; CosFace typically 0.35-0.4)
margin_weight = 1.0           # margin_head: weight of its loss against the distillation loss
epochs = 11                   # training epochs (ignored when num_steps > 0)
num_steps = 0                 # total training steps; > 0 overrides epochs
scheduler = "step"            # step | cosine | poly
lr_milestones = [10 / 11]     # step schedule: fractions of training after which lr is multiplied by lr_gamma (10/11 = the last of 11 epochs)
lr_gamma = 0.1                # step schedule decay factor
warmup_steps = 0              # linear warm-up steps
amp = True                    # mixed precision on CUDA (ignored on CPU)

# ---- run ----------------------------------------------------------------------------------------
output = ""                   # output folder: checkpoints, config used, metrics, summary; "" = work_dirs/<config name>[_<network>]_w<W>a<A>
save_every = 1000             # checkpoint every N steps (and at the end)
keep_last = 3                 # checkpoints kept
resume = False               # continue from the last checkpoint in output
log_every = 10                # metrics line every N steps
tensorboard = False           # also write TensorBoard events (needs the tensorboard package)
device = "auto"               # auto (cuda when present) | cpu | cuda | cuda:N
num_workers = 8               # DataLoader worker processes (folder / recordio), at most one per CPU core
assets_dir = os.environ.get("QUANTFACE_ASSETS", "~/.cache/quantface")  # asset cache (tools/fetch_assets.py)
config_file = ""              # set by the loader: the experiment file this config came from

# ---- evaluation ---------------------------------------------------------------------------------
eval_targets = ["lfw", "cfp_fp", "agedb_30", "calfw", "cplfw"]  # .bin verification sets
eval_data_dir = ""            # folder holding <target>.bin; "" = no verification during training
eval_every = 2000             # verify every N steps during training
eval_batch_size = 64          # batch size for verification

# ---- experimental: data options measured not to help (docs/data.md); kept for the studies in lab/ ---------
augment_crop = 1.0            # smallest random square crop, as a share of the face's area (resized back); 1 = off
augment_rotate = 0.0          # largest random rotation in degrees, either way; 0 = off
augment_color = 0.0           # brightness, contrast and saturation each scaled by a random factor in [1 - x, 1 + x]; 0 = off
augment_blur = 0.0            # share of training faces blurred or sharpened (half each); 0 = off
augment_mixup = 0.0           # largest share of the batch's next face blended into each face; 0 = off
generator_upsample = "bicubic"  # data_source="generator": how the 64-px DCGAN faces are enlarged: bicubic | bilinear | sharp (bicubic + unsharp mask)
latent_interpolation = 0.0    # data_source="generator": share of faces made from a point between two random latents
