"""Small models and data shared by the tests: the tiny shipped CLIP, class-dependent toy images, and a plain
restatement of the IVLP vision forward to compare the project's against."""

from __future__ import annotations

import torch


def tiny_clip(name: str = "tiny-vit"):
    """The shipped tiny architecture with its (seeded) random weights."""
    from prompt_ot.models.backbone import load_backbone

    return load_backbone(name)


class ToyImages(torch.utils.data.Dataset):
    """Class-dependent random images (each class a different mean colour) so that training can learn."""

    def __init__(self, n_per_class: int, n_classes: int, size: int = 32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n_classes).repeat_interleave(n_per_class)
        colours = torch.rand(n_classes, 3, 1, 1, generator=g) * 2 - 1
        noise = torch.randn(len(self.labels), 3, size, size, generator=g) * 0.5
        self.images = colours[self.labels] + noise
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        # a view that depends on (epoch, index), as the real augmented views do
        flip = (self.epoch + i) % 2 == 1
        image = self.images[i].flip(-1) if flip else self.images[i]
        return image, int(self.labels[i])


def reference_deep_vision(clip, images, prompts):
    """Straightforward IVLP vision forward written out block by block, as the reference."""
    v = clip.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
    n = prompts[0].shape[0]
    x = v.ln_pre(torch.cat([x, prompts[0].expand(x.shape[0], -1, -1)], 1))
    for i, block in enumerate(v.transformer.resblocks):
        if 0 < i < len(prompts):
            x = torch.cat([x[:, :-n], prompts[i].expand(x.shape[0], -1, -1)], 1)  # replace, not add
        x = block(x)
    x = v.ln_post(x[:, :-n])
    return x[:, 0] @ v.proj
