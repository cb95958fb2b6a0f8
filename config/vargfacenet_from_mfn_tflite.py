"""VarGFaceNet distilled from a real teacher (VarGFaceNet, Yan et al. 2019): the demo's pretrained
MobileFaceNet teaches a VarGFaceNet trained from scratch on its 192-D embedding with the angular loss, on
DCGAN faces generated on the fly, at W8A8; the student learns on the teacher's input (its spec is adopted).
Set generations=2 or 3 for the paper's recursive distillation (each generation from the previous student)."""
_base_ = "demo_mbf_w8a8.py"

student_network = "vargfacenet"
student_embedding_size = 192  # the teacher's embedding size: no projection needed
equalize = False              # a random-init student: nothing to equalise or bias-correct yet
bias_correction = False
calibration_batches = 4
loss = "angular"
optimizer = "adamw"
lr = 1e-3                     # from scratch: far larger steps than the copy-of-the-teacher demos
scheduler = "cosine"
warmup_steps = 50
num_steps = 3000
save_every = 500
output = "work_dirs/vargfacenet_from_mfn_tflite"
float_conv_inputs = False     # every activation at 8 bits (the W8A8 demo it builds on leaves some float)
