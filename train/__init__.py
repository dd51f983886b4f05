"""Training stage (``projgan.train``): dataset, feature network, discriminators, DiffAugment, loop."""
