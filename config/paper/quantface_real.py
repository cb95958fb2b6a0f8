"""QuantFace's real-data setting, for comparison with the paper: one epoch over MS1MV2 (insightface
``faces_emore`` RecordIO) at a constant learning rate; otherwise as quantface_synthetic.py (not exportable)."""
_base_ = "quantface_synthetic.py"

data_source = "recordio"
data_path = "data/faces_emore"  # folder holding train.rec + train.idx (insightface MS1MV2 release)
epochs = 1
lr_milestones = []            # the paper's real-data run never reaches its first decay
