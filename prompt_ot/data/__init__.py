"""Datasets: their definitions, downloads, splits, few-shot manifests, the image store and augmentation."""
