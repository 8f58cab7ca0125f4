"""Prediction on a user's own images and whole slides (issue 10).

The engine (:mod:`.engine`, :mod:`.blocks`, :mod:`.tta`) calls the model; slide reading
(:mod:`.slides`) and tissue masks (:mod:`.tissue`) do not import TensorFlow.
"""
from .result import Nuclei

__all__ = ["Nuclei"]
