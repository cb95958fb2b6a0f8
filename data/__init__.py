"""Training data: synthetic faces (DCGAN on the fly, or an image folder) and insightface RecordIO; one image
decoder (``data.images``); 5-point alignment."""
from data.folder import FaceFolderDataset
from data.generated import GeneratedFaces
from data.recordio import RecordIODataset
from data.settings import DataSettings
from data.train_batches import TrainBatches, build_train_batches

__all__ = ["DataSettings", "FaceFolderDataset", "GeneratedFaces", "RecordIODataset", "TrainBatches",
           "build_train_batches"]
