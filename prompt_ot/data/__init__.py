"""Datasets: recipes, downloads, splits, few-shot manifests, the image store and augmentation."""
