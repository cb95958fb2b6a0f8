"""QuantFace (ICPR 2022) synthetic-data setting shared by every ``*_synthetic.py`` experiment.

The rest of the paper's recipe is already the default in base.py: act_observer="minmax" with ranges
frozen after observer_steps=300, BatchNorm updated (bn_mode="train"), 528k generated faces per epoch,
11 epochs, SGD with lr = 0.1 x total batch / 512 (lr = 0), x0.1 for the last epoch, MSE on
L2-normalised embeddings.
"""
quant_mode = "quantface"      # the paper's quantizer placement (see base.py)
