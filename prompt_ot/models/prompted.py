"""CLIP with independent deep vision and language prompts (IVLP), everything but the prompts frozen.

Text: ``n`` learnable context tokens sit at positions 1..n of "X X X X {class}." (the X's are
placeholders); the layer-0 tokens are initialised from the embedding of ``ctx_init`` ("a photo of a").
Vision: ``n`` learnable tokens appended after the patch tokens. At each deeper layer up to ``depth`` the
prompt tokens *replace* the previous layer's outputs at those positions (nothing accumulates); deeper
prompts start as normal(0, 0.02). With a depth of 0 a modality is the frozen open_clip encoder.

The text sequence is cut at the longest end-of-text position among the prompts: CLIP's text transformer
is causal, so the pooled feature is exactly that of the full 77-token forward, at a fraction of the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prompt_ot.errors import UserError

PLACEHOLDER = "X"


@dataclass(frozen=True)
class PromptConfig:
    text_ctx: int = 4
    text_depth: int = 12
    vision_ctx: int = 4
    vision_depth: int = 12
    ctx_init: str | None = "a photo of a"
    init_std: float = 0.02

    def validate(self, text_layers: int, vision_layers: int) -> None:
        for key, value, limit in (
            ("text_depth", self.text_depth, text_layers),
            ("vision_depth", self.vision_depth, vision_layers),
        ):
            if not 0 <= value <= limit:
                raise UserError(f"prompt {key}={value} is out of range: use 0 (off) to {limit} (the encoder's layers)")
        for key, value, depth in (("text_ctx", self.text_ctx, self.text_depth), ("vision_ctx", self.vision_ctx, self.vision_depth)):
            if value < 0 or (depth > 0 and value == 0):
                raise UserError(f"prompt {key}={value} must be a positive token count when its depth is > 0")


def _blocks_forward(transformer: nn.Module, x: torch.Tensor, attn_mask, replace) -> torch.Tensor:
    """Run the residual blocks on a batch-first sequence, calling ``replace(i, x)`` before block i."""
    batch_first = getattr(transformer, "batch_first", True)
    for i, block in enumerate(transformer.resblocks):
        x = replace(i, x)
        if batch_first:
            x = block(x, attn_mask=attn_mask)
        else:
            x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
    return x


class PromptedCLIP(nn.Module):
    """A frozen open_clip ``CLIP`` plus learnable deep prompts; the trainable state is only the prompts."""

    def __init__(self, clip: nn.Module, tokenizer, config: PromptConfig = PromptConfig()):
        super().__init__()
        if not hasattr(clip, "token_embedding") or not hasattr(clip.visual, "conv1"):
            raise UserError(
                f"{type(clip).__name__} is not supported: prompting needs an open_clip CLIP with a ViT image "
                "tower and the built-in text transformer (ViT-*/quickgelu models)"
            )
        self.clip = clip
        self.tokenizer = tokenizer
        self.config = config
        text_layers = len(clip.transformer.resblocks)
        vision_layers = len(clip.visual.transformer.resblocks)
        config.validate(text_layers, vision_layers)
        for p in clip.parameters():
            p.requires_grad_(False)
        text_width = clip.token_embedding.weight.shape[1]
        vision_width = clip.visual.conv1.out_channels
        dtype = clip.token_embedding.weight.dtype
        self.text_prompts = nn.ParameterList(
            nn.Parameter(torch.randn(config.text_ctx, text_width, dtype=dtype) * config.init_std)
            for _ in range(config.text_depth)
        )
        self.vision_prompts = nn.ParameterList(
            nn.Parameter(torch.randn(config.vision_ctx, vision_width, dtype=dtype) * config.init_std)
            for _ in range(config.vision_depth)
        )
        if config.text_depth > 0 and config.ctx_init:
            init_tokens = tokenizer([config.ctx_init])[0]
            n_words = int(init_tokens.argmax()) - 1  # between start-of-text and end-of-text
            if n_words != config.text_ctx:
                raise UserError(
                    f"ctx_init {config.ctx_init!r} is {n_words} tokens but text_ctx is {config.text_ctx}; "
                    "make them agree or set ctx_init to null for a random start"
                )
            with torch.no_grad():
                embedded = clip.token_embedding(init_tokens.to(clip.token_embedding.weight.device))
                self.text_prompts[0].copy_(embedded[1 : 1 + n_words])
        self.register_buffer("class_tokens", torch.zeros(0, 1, dtype=torch.long), persistent=False)
        self.register_buffer("frozen_class_tokens", torch.zeros(0, 1, dtype=torch.long), persistent=False)
        self.classnames: list[str] = []

    # ------------------------------------------------------------------ classes
    def set_classnames(self, classnames: list[str], template: str = "a photo of a {}.") -> None:
        """Tokenise the class prompts once: prompted ("X X X X {c}.") and hand-crafted (``template``)."""
        device = self.clip.token_embedding.weight.device
        classnames = [c.replace("_", " ") for c in classnames]  # CoOp's split files keep underscores
        self.classnames = list(classnames)
        prefix = " ".join([PLACEHOLDER] * self.config.text_ctx)
        prompted = [f"{prefix} {c}." for c in classnames] if self.config.text_depth > 0 else [template.format(c) for c in classnames]
        self.class_tokens = self.tokenizer(prompted).to(device)
        self.frozen_class_tokens = self.tokenizer([template.format(c) for c in classnames]).to(device)

    # ------------------------------------------------------------------ text
    def encode_tokens(self, tokens: torch.Tensor, use_prompts: bool = True, truncate: bool = True,
                      layer_prompts: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Text features (unnormalised) of token ids, truncated at the longest end-of-text position.

        ``layer_prompts`` (one (rows, n, width) tensor per prompted layer) gives each row its own prompts,
        as packed runs need; by default every row gets this model's prompts.
        """
        clip = self.clip
        eot = tokens.argmax(dim=-1)
        length = int(eot.max()) + 1 if truncate else tokens.shape[1]
        tokens = tokens[:, :length]
        x = clip.token_embedding(tokens)
        depth = self.config.text_depth if use_prompts else 0
        n = self.config.text_ctx
        batch = x.shape[0]
        if depth > 0 and layer_prompts is None:
            layer_prompts = [p.unsqueeze(0).expand(batch, -1, -1) for p in self.text_prompts]
        if depth > 0:
            x = torch.cat([x[:, :1], layer_prompts[0].to(x.dtype), x[:, 1 + n :]], dim=1)
        x = x + clip.positional_embedding[:length].to(x.dtype)
        mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None

        def replace(i: int, h: torch.Tensor) -> torch.Tensor:
            if 0 < i < depth:
                h = torch.cat([h[:, :1], layer_prompts[i].to(h.dtype), h[:, 1 + n :]], dim=1)
            return h

        x = _blocks_forward(clip.transformer, x, mask, replace)
        x = clip.ln_final(x)
        x = x[torch.arange(batch, device=x.device), eot]
        if clip.text_projection is not None:
            x = clip.text_projection(x) if isinstance(clip.text_projection, nn.Linear) else x @ clip.text_projection
        return x

    def class_text_features(self) -> torch.Tensor:
        """Normalised prompted text features of every class (C, D); differentiable in the prompts."""
        if len(self.class_tokens) == 0:
            raise RuntimeError("call set_classnames() first")
        return F.normalize(self.encode_tokens(self.class_tokens, use_prompts=True), dim=-1)

    @torch.no_grad()
    def frozen_class_text_features(self) -> torch.Tensor:
        """Normalised frozen text features of the hand-crafted prompts (C, D)."""
        return F.normalize(self.encode_tokens(self.frozen_class_tokens, use_prompts=False), dim=-1)

    # ------------------------------------------------------------------ vision
    def encode_image(self, images: torch.Tensor, use_prompts: bool = True,
                     layer_prompts: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Image features (unnormalised); prompt tokens are appended after the patch tokens.

        ``layer_prompts`` as in :meth:`encode_tokens`: per-row prompts of packed runs.
        """
        visual = self.clip.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.patch_dropout(x)
        depth = self.config.vision_depth if use_prompts else 0
        n = self.config.vision_ctx
        batch = x.shape[0]
        if depth > 0 and layer_prompts is None:
            layer_prompts = [p.unsqueeze(0).expand(batch, -1, -1) for p in self.vision_prompts]
        if depth > 0:
            x = torch.cat([x, layer_prompts[0].to(x.dtype)], dim=1)
        x = visual.ln_pre(x)

        def replace(i: int, h: torch.Tensor) -> torch.Tensor:
            if 0 < i < depth:
                h = torch.cat([h[:, :-n], layer_prompts[i].to(h.dtype)], dim=1)
            return h

        x = _blocks_forward(visual.transformer, x, None, replace)
        if depth > 0:
            x = x[:, :-n]
        pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return pooled

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encode_image(images, use_prompts=True), dim=-1)

    @torch.no_grad()
    def frozen_image_features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encode_image(images, use_prompts=False), dim=-1)

    # ------------------------------------------------------------------ logits and state
    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def forward(self, images: torch.Tensor, class_text: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, C) of images against the current classes."""
        if class_text is None:
            class_text = self.class_text_features()
        return self.logit_scale * self.image_features(images) @ class_text.t()

    def prompt_state(self) -> dict[str, torch.Tensor]:
        """The trainable parameters only, by name (what a checkpoint stores)."""
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}

    def load_prompt_state(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        expected = {n for n, p in own.items() if p.requires_grad}
        if set(state) != expected or any(state[n].shape != own[n].shape for n in expected):
            got = {n: tuple(t.shape) for n, t in state.items()}
            want = {n: tuple(own[n].shape) for n in expected}
            raise UserError(
                f"checkpoint does not match this method/backbone: it holds {got}, the model expects {want}; "
                "load a checkpoint trained with the same method and backbone"
            )
        with torch.no_grad():
            for n in expected:
                own[n].copy_(state[n].to(own[n].dtype))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


# ---------------------------------------------------------------------- packed runs
def _rows(prompt_lists, counts: list[int]) -> list[torch.Tensor]:
    """Per-layer (sum(counts), n, width) prompts: each model's prompts repeated for its rows."""
    return [torch.cat([layer.unsqueeze(0).expand(count, -1, -1) for layer, count in zip(layers, counts)])
            for layers in zip(*prompt_lists)]


def packed_image_features(models: list[PromptedCLIP], images: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Normalised prompted image features of ``images``, the first counts[0] rows with models[0]'s prompts
    and so on, in one forward of the shared backbone. One model is ``models[0].image_features(images)``."""
    if len(models) == 1:
        return models[0].image_features(images)
    first = models[0]
    layers = _rows([m.vision_prompts for m in models], counts) if first.config.vision_depth > 0 else None
    return F.normalize(first.encode_image(images, use_prompts=True, layer_prompts=layers), dim=-1)


def packed_class_text_features(models: list[PromptedCLIP]) -> list[torch.Tensor]:
    """Each model's normalised prompted class-text features (C_r, D), from one forward of the shared backbone
    over all models' classes (cut at the longest end-of-text among them, which causal attention allows)."""
    if len(models) == 1:
        return [models[0].class_text_features()]
    counts = [len(m.class_tokens) for m in models]
    if min(counts) == 0:
        raise RuntimeError("call set_classnames() on every packed model first")
    tokens = torch.cat([m.class_tokens for m in models])
    first = models[0]
    layers = _rows([m.text_prompts for m in models], counts) if first.config.text_depth > 0 else None
    features = F.normalize(first.encode_tokens(tokens, use_prompts=True, layer_prompts=layers), dim=-1)
    return list(features.split(counts))
