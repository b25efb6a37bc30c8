"""tokenunify: self-supervised pretraining and neuron segmentation of 3D EM volumes."""

__version__ = "0.1.0"
