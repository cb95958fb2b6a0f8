"""QuantFace (Boutros et al., ICPR 2022), synthetic-data setting, for comparison with the paper.

Reproduces the paper's quantizer placement and min/max QAT: activation ranges observed for the first 300
steps then frozen, BatchNorm updated, 528k generated faces per epoch for 11 epochs, SGD with
lr = 0.1 x total batch / 512 and x0.1 for the last epoch, MSE on L2-normalised embeddings (base.py's
defaults).  Its student is NOT exportable to integer kernels (export_model.py refuses it): for a model to
ship, use config/<network>_synthetic.py.  Give the teacher and bits on the command line:

    python train_quantization.py config/paper/quantface_synthetic.py network=r100 \
        teacher=pretrained/ms1mv2_arcface_r100/backbone.pth weight_bits=4 act_bits=4
"""
quant_mode = "quantface"      # the paper's placement (quantized PReLU outputs, asymmetric per-channel weights)
