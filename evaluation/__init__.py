"""Evaluation (``projgan.evaluation``): FID/KID with clean-fid, reference statistics, benchmarks, plots."""
