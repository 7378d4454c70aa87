"""Backbones (open_clip models by name, pretrained tag or local file) and the prompted CLIP wrapper."""
