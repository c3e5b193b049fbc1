"""Datasets: readers of real recordings and synthetic scenes with exact ground truth."""
