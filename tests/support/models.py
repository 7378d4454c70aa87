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


def shrunk_config(name: str, layers: int = 2, width_divisor: int = 8) -> dict:
    """open_clip's config of ``name`` with ``layers`` blocks in each tower (a ResNet: one per stage) and its
    widths (and ``embed_dim``) divided by ``width_divisor``, rounded to a multiple of 32 with heads of width 32 (1: the
    real widths and heads). Every other setting (patch and image size, MLP ratio, layer scale, QuickGELU, context
    length, vocabulary) is kept, so the model is of the same family."""
    import copy

    from prompt_ot.models.matrix import model_config

    config = copy.deepcopy(model_config(name))
    vision, text = config["vision_cfg"], config["text_cfg"]
    resnet = isinstance(vision.get("layers"), (list, tuple))  # a ResNet: one block in each of its four stages
    vision["layers"], text["layers"] = [1] * len(vision["layers"]) if resnet else layers, layers
    if width_divisor != 1:

        def narrow(width: int) -> int:
            return max(32, 32 * round(width / width_divisor / 32))

        vision["width"] = narrow(vision.get("width", 768))
        if not resnet:
            vision["head_width"] = 32
        text["width"] = narrow(text.get("width", 512))
        text["heads"] = text["width"] // 32
        config["embed_dim"] = narrow(config["embed_dim"])
    return config


def shrunk_backbone(name: str, layers: int = 2, width_divisor: int = 8):
    """``name``'s family at :func:`shrunk_config`, built by open_clip's factory with the shrunk config dict and
    random (seeded) weights, frozen and in eval mode as ``load_backbone`` returns a backbone; ``(clip, tokenizer,
    image_size)``."""
    import open_clip

    from prompt_ot.models.backbone import RANDOM_INIT_SEED, register_shipped_configs

    register_shipped_configs()
    config = shrunk_config(name, layers, width_divisor)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        clip = open_clip.create_model(name, pretrained=None, **config)
    clip.eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    size = config["vision_cfg"]["image_size"]
    return clip, open_clip.get_tokenizer(name), size if isinstance(size, int) else int(size[0])
