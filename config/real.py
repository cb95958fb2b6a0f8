"""The recipe of ``synthetic.py`` on real faces: an insightface RecordIO training set (e.g. MS1MV2's
``faces_emore``) instead of generated faces.  Only the images are used (distillation needs no labels)."""
_base_ = "synthetic.py"

data_source = "recordio"
data_path = "data/faces_emore"  # folder holding train.rec + train.idx (insightface release)
