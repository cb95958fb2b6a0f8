"""Distillation: the student learns the float teacher's embeddings (``losses``) and, optionally, its
intermediate outputs (``features``), on synthetic or real faces.  ``settings`` cuts the flat config into
checked sections, ``models`` loads the teacher and makes the student, ``setup`` builds a run and ``resume``
puts a stopped one back, ``loop`` trains it, ``callbacks`` log, verify and checkpoint it, ``train_state`` makes it resumable bit for bit, and
``schedule`` gives its learning rate per step."""
from distill.generations import train_generations
from distill.loop import FINAL_STUDENT, train
from distill.setup import TrainingError, prepare_run

__all__ = ["FINAL_STUDENT", "TrainingError", "prepare_run", "train", "train_generations"]
