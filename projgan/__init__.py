"""Projected GAN: train a FastGAN generator against projected discriminators, export it, serve it.

The core package (this folder) imports only the standard library, numpy, torch and safetensors.
Stages live in subpackages: ``projgan.train``, ``projgan.export``, ``projgan.serve``,
``projgan.evaluation``.
"""

__version__ = "0.1.0"
