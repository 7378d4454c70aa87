"""CLIP with independent deep vision and language prompts (IVLP), everything but the prompts frozen.

Text: ``n`` learnable context tokens sit at positions 1..n of "X X X X {class}." (the X's are
placeholders); the layer-0 tokens are initialised from the embedding of ``ctx_init`` ("a photo of a").
Vision: ``n`` learnable tokens appended after the patch tokens. At each deeper layer up to ``depth`` the
prompt tokens *replace* the previous layer's outputs at those positions (nothing accumulates); deeper
prompts start as normal(0, 0.02). With a depth of 0 a modality is the frozen open_clip encoder.

The text sequence is cut at the longest end-of-text position among the prompts: CLIP's text transformer
is causal, so the pooled feature is exactly that of the full 77-token forward, at a fraction of the cost.
The prompted class texts go further (:func:`shared_prefix_text`): their first 1 + n positions (start token
and prompts) are the same for every class at every layer, again because attention is causal, so that
prefix is computed once, and each class's own tokens are processed without padding; only the attention
sees a padded layout. The result equals the full forward up to float rounding.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

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
    # fixed words between the context tokens and the class name ("of a" for MaPLe's 2 tokens from "a photo")
    fixed_words: str = ""
    # MaPLe: the vision prompts of each depth are a linear map of that depth's text prompts (no free ones)
    coupled: bool = False
    # CoCoOp: a meta-net of hidden width (image feature width) / meta_net shifts the context per image; 0: off
    meta_net: int = 0

    def validate(self, text_layers: int, vision_layers: int) -> None:
        for key, value, limit in (
            ("text_depth", self.text_depth, text_layers),
            ("vision_depth", self.vision_depth, vision_layers),
        ):
            if not 0 <= value <= limit:
                raise UserError(f"prompt {key}={value} is out of range: use 0 (off) to {limit} (the encoder's layers)")
        for key, value, depth in (
            ("text_ctx", self.text_ctx, self.text_depth),
            ("vision_ctx", self.vision_ctx, self.vision_depth),
        ):
            if value < 0 or (depth > 0 and value == 0):
                raise UserError(f"prompt {key}={value} must be a positive token count when its depth is > 0")
        if self.coupled and (self.vision_ctx, self.vision_depth) != (self.text_ctx, self.text_depth):
            raise UserError(
                f"coupled prompts map each text prompt to a vision prompt: vision_ctx/vision_depth "
                f"({self.vision_ctx}/{self.vision_depth}) must equal text_ctx/text_depth "
                f"({self.text_ctx}/{self.text_depth})"
            )
        if self.coupled and self.text_depth == 0:
            raise UserError("coupled prompts need text_depth > 0")
        if self.meta_net < 0 or (self.meta_net and self.text_depth != 1):
            raise UserError(
                f"meta_net={self.meta_net} must be 0 (off) or a positive width divisor, and the "
                f"conditional context needs text prompts at the input only (text_depth 1, got "
                f"{self.text_depth})"
            )

    @property
    def conditional(self) -> bool:
        """Whether the class prompts depend on the image (CoCoOp)."""
        return self.meta_net > 0


def _blocks_forward(transformer: nn.Module, x: torch.Tensor, attn_mask, replace, blocks=None) -> torch.Tensor:
    """Run the residual blocks (default: all) on a batch-first sequence, calling ``replace(i, x)`` before block i."""
    batch_first = getattr(transformer, "batch_first", True)
    for i, block in enumerate(transformer.resblocks if blocks is None else blocks):
        x = replace(i, x)
        if batch_first:
            x = block(x, attn_mask=attn_mask)
        else:
            x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
    return x


def _image_feature_width(visual: nn.Module) -> int:
    """The width of the image tower's output feature (after the projection)."""
    proj = getattr(visual, "proj", None)
    if proj is None and not hasattr(visual, "transformer"):  # a ResNet: its attention pool projects to output_dim
        return int(visual.output_dim)
    return int(proj.shape[1]) if proj is not None else int(visual.conv1.out_channels)


def vision_transformer_layers(visual: nn.Module) -> int:
    """The blocks of a ViT image tower; 0 for a tower without (a ResNet), which takes no vision prompts."""
    return len(visual.transformer.resblocks) if hasattr(visual, "transformer") else 0


def _first_token_pooling(visual: nn.Module) -> bool:
    """Whether the image feature is the class token after ``ln_post`` (CLIP's ViTs), with standard blocks."""
    block = visual.transformer.resblocks[-1]
    return (
        getattr(visual, "attn_pool", None) is None
        and getattr(visual, "pool_type", "tok") == "tok"
        and isinstance(getattr(block, "attn", None), nn.MultiheadAttention)
        and not hasattr(block, "ln_1_kv")
    )


def _first_token_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of an open_clip ``ResidualAttentionBlock`` at the first position only, (B, width)."""
    attn = block.attn
    width = x.shape[-1]
    h = block.ln_1(x)
    q = F.linear(h[:, :1], attn.in_proj_weight[:width], attn.in_proj_bias[:width])
    kv = F.linear(h, attn.in_proj_weight[width:], attn.in_proj_bias[width:])
    k, v = kv.chunk(2, dim=-1)
    first = x[:, :1] + block.ls_1(attn.out_proj(_attend(attn, q, k, v, None)))
    first = first + block.ls_2(block.mlp(block.ln_2(first)))
    return first[:, 0]


class PromptedCLIP(nn.Module):
    """A frozen open_clip ``CLIP`` plus learnable deep prompts; the trainable state is only the prompts.

    ``text_chunk`` (set by the trainer from ``train.text_chunk``; 0 = off): while gradients are recorded, the
    prompted class texts are encoded that many prompt sequences at a time, each chunk under activation
    checkpointing, so the text tower's activations of only one chunk are held at a time (docs/performance.md).
    """

    text_chunk: int = 0

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
        vision_layers = vision_transformer_layers(clip.visual)
        config.validate(text_layers, vision_layers)
        for p in clip.parameters():
            p.requires_grad_(False)
        text_width = clip.token_embedding.weight.shape[1]
        vision_width = clip.visual.conv1.out_channels
        dtype = self.dtype
        self.text_prompts = nn.ParameterList(
            nn.Parameter(torch.randn(config.text_ctx, text_width, dtype=dtype) * config.init_std)
            for _ in range(config.text_depth)
        )
        self.vision_prompts = nn.ParameterList(
            nn.Parameter(torch.randn(config.vision_ctx, vision_width, dtype=dtype) * config.init_std)
            for _ in range(0 if config.coupled else config.vision_depth)  # coupled: mapped from the text prompts
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
                self.text_prompts[0].copy_(embedded[1 : 1 + n_words].to(dtype))
        if config.coupled:
            # MaPLe: F_0 on its own, F_1 ... F_{d-1} start as copies of one layer (as its released code builds them)
            first = nn.Linear(text_width, vision_width)
            shared = nn.Linear(text_width, vision_width)
            deeper = [copy.deepcopy(shared) for _ in range(config.text_depth - 1)]
            self.couplings = nn.ModuleList([first, *deeper]).to(dtype)
        if config.meta_net:
            image_width = _image_feature_width(clip.visual)
            hidden = max(1, image_width // config.meta_net)
            self.meta_net = nn.Sequential(
                nn.Linear(image_width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, text_width)
            ).to(dtype)
        self.register_buffer("class_tokens", torch.zeros(0, 1, dtype=torch.long), persistent=False)
        self.register_buffer("frozen_class_tokens", torch.zeros(0, 1, dtype=torch.long), persistent=False)
        self.classnames: list[str] = []

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: half for a backbone loaded at fp16 (its embeddings stay float32 and are cast, as
        CoOp casts them), else float32."""
        return self.clip.visual.conv1.weight.dtype

    # ------------------------------------------------------------------ classes
    def set_classnames(self, classnames: list[str], template: str = "a photo of a {}.") -> None:
        """Tokenise the class prompts once: prompted ("X X X X {c}.") and hand-crafted (``template``)."""
        device = self.clip.token_embedding.weight.device
        classnames = [c.replace("_", " ") for c in classnames]  # CoOp's split files keep underscores
        self.classnames = list(classnames)
        prefix = " ".join(
            [PLACEHOLDER] * self.config.text_ctx + ([self.config.fixed_words] if self.config.fixed_words else [])
        )
        prompted = (
            [f"{prefix} {c}." for c in classnames]
            if self.config.text_depth > 0
            else [template.format(c) for c in classnames]
        )
        self.class_tokens = self.tokenizer(prompted).to(device)
        self._classes_version = getattr(self, "_classes_version", 0) + 1  # invalidates the cached text layout
        self.frozen_class_tokens = self.tokenizer([template.format(c) for c in classnames]).to(device)

    # ------------------------------------------------------------------ text
    def encode_tokens(
        self,
        tokens: torch.Tensor,
        use_prompts: bool = True,
        truncate: bool = True,
        layer_prompts: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Text features (unnormalised) of token ids, truncated at the longest end-of-text position.

        ``layer_prompts`` (one (rows, n, width) tensor per prompted layer) gives each row its own prompts,
        as packed runs need; by default every row gets this model's prompts.
        """
        clip = self.clip
        eot = tokens.argmax(dim=-1)
        length = int(eot.max()) + 1 if truncate else tokens.shape[1]
        tokens = tokens[:, :length]
        x = clip.token_embedding(tokens).to(self.dtype)
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

    @property
    def conditional(self) -> bool:
        """Whether each image has its own class prompts (CoCoOp's meta-net)."""
        return self.config.conditional

    def class_text_features(self) -> torch.Tensor:
        """Normalised prompted text features of every class (C, D); differentiable in the prompts."""
        if len(self.class_tokens) == 0:
            raise RuntimeError("call set_classnames() first")
        if self.conditional:
            raise RuntimeError(
                "the class prompts of a conditional model depend on the image: use "
                "conditional_class_text(image_features)"
            )
        if self.config.text_depth > 0:
            return shared_prefix_text([self])[0]
        return F.normalize(self.encode_tokens(self.class_tokens, use_prompts=True), dim=-1)

    def conditional_context(self, image_features: torch.Tensor) -> torch.Tensor:
        """CoCoOp's per-image context (B, n, width): the shared context plus the meta-net's shift of each
        (normalised) image feature, added to every context token."""
        shift = self.meta_net(image_features.to(self.dtype))
        return self.text_prompts[0].unsqueeze(0) + shift.unsqueeze(1)

    def conditional_class_text(self, image_features: torch.Tensor) -> torch.Tensor:
        """Normalised class-text features of each image's own prompts (B, C, D), all B x C prompt sequences in one
        batched forward (each image's start token and context computed once for its C classes)."""
        if len(self.class_tokens) == 0:
            raise RuntimeError("call set_classnames() first")
        heads = self.conditional_context(image_features)
        batch = heads.shape[0]
        features = _layout_forward(self, [self.class_tokens] * batch, ("conditional", batch), [heads])
        return features.view(batch, len(self.class_tokens), -1)

    def conditional_logits(self, image_features: torch.Tensor, max_rows: int = 8192) -> torch.Tensor:
        """Logits (B, C) of normalised image features against each image's own class prompts, in chunks of at
        most ``max_rows`` prompt sequences."""
        chunk = max(1, max_rows // max(1, len(self.class_tokens)))
        logits = [
            self.logit_scale * torch.einsum("bd,bcd->bc", part, self.conditional_class_text(part).to(part.dtype))
            for part in image_features.split(chunk)
        ]
        return torch.cat(logits)

    @torch.no_grad()
    def frozen_class_text_features(self) -> torch.Tensor:
        """Normalised frozen text features of the hand-crafted prompts (C, D)."""
        return F.normalize(self.encode_tokens(self.frozen_class_tokens, use_prompts=False), dim=-1)

    @torch.no_grad()
    def frozen_ensemble_text_features(self, templates: list[str]) -> torch.Tensor:
        """Normalised frozen class texts averaged over ``templates`` (C, D): per class the mean of the
        unnormalised frozen features of every template, then normalised (PromptSRC's frozen text target)."""
        device = self.clip.token_embedding.weight.device
        tokens = self.tokenizer([t.format(c) for t in templates for c in self.classnames]).to(device)
        features = torch.cat([self.encode_tokens(part, use_prompts=False) for part in tokens.split(1024)])
        return F.normalize(features.view(len(templates), len(self.classnames), -1).float().mean(0), dim=-1)

    # ------------------------------------------------------------------ vision
    def encode_image(
        self, images: torch.Tensor, use_prompts: bool = True, layer_prompts: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Image features (unnormalised); prompt tokens are appended after the patch tokens.

        ``layer_prompts`` as in :meth:`encode_tokens`: per-row prompts of packed runs.
        """
        visual = self.clip.visual
        if not hasattr(visual, "transformer"):  # a ResNet image tower: no vision prompts, open_clip's own forward
            return visual(images.to(visual.conv1.weight.dtype))
        x = visual.conv1(images.to(visual.conv1.weight.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.patch_dropout(x)
        depth = self.config.vision_depth if use_prompts else 0
        n = self.config.vision_ctx
        batch = x.shape[0]
        if depth > 0 and layer_prompts is None:
            layer_prompts = [p.unsqueeze(0).expand(batch, -1, -1) for p in self.vision_prompt_tensors()]
        if depth > 0:
            x = torch.cat([x, layer_prompts[0].to(x.dtype)], dim=1)
        x = visual.ln_pre(x)

        def replace(i: int, h: torch.Tensor) -> torch.Tensor:
            if 0 < i < depth:
                h = torch.cat([h[:, :-n], layer_prompts[i].to(h.dtype)], dim=1)
            return h

        blocks = visual.transformer.resblocks
        if torch.is_grad_enabled() and _first_token_pooling(visual):
            # Only the class token of the last block is used: run that block for it alone (keys and values
            # still come from every token), which skips most of the last block's work and its backward.
            # Training only: without gradients (caches, evaluation) open_clip's blocks run unchanged, so
            # cached features do not depend on the batch size.
            x = _blocks_forward(visual.transformer, x, None, replace, blocks=blocks[:-1])
            x = replace(len(blocks) - 1, x)
            pooled = visual.ln_post(_first_token_block(blocks[-1], x))
        else:
            x = _blocks_forward(visual.transformer, x, None, replace)
            if depth > 0:
                x = x[:, :-n]
            pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return pooled

    def vision_prompt_tensors(self) -> list[torch.Tensor]:
        """The vision prompts of each prompted layer, (n, width) each: the free ones, or for coupled prompts
        (MaPLe) each depth's coupling layer applied to that depth's text prompts."""
        if self.config.coupled:
            return [f(p) for f, p in zip(self.couplings, self.text_prompts)]
        return list(self.vision_prompts)

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
        if self.conditional:
            return self.conditional_logits(self.image_features(images))
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
    return [
        torch.cat([layer.unsqueeze(0).expand(count, -1, -1) for layer, count in zip(layers, counts)])
        for layers in zip(*prompt_lists)
    ]


def packed_image_features(models: list[PromptedCLIP], images: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Normalised prompted image features of ``images``, the first counts[0] rows with models[0]'s prompts
    and so on, in one forward of the shared backbone. One model is ``models[0].image_features(images)``."""
    if len(models) == 1:
        return models[0].image_features(images)
    first = models[0]
    layers = _rows([m.vision_prompt_tensors() for m in models], counts) if first.config.vision_depth > 0 else None
    return F.normalize(first.encode_image(images, use_prompts=True, layer_prompts=layers), dim=-1)


def packed_class_text_features(models: list[PromptedCLIP]) -> list[torch.Tensor]:
    """Each model's normalised prompted class-text features (C_r, D), from one forward of the shared backbone
    over all models' classes (cut at the longest end-of-text among them, which causal attention allows)."""
    if len(models) == 1:
        return [models[0].class_text_features()]
    counts = [len(m.class_tokens) for m in models]
    if min(counts) == 0:
        raise RuntimeError("call set_classnames() on every packed model first")
    if models[0].config.text_depth > 0:
        return shared_prefix_text(models)
    tokens = torch.cat([m.class_tokens for m in models])
    features = F.normalize(models[0].encode_tokens(tokens, use_prompts=True), dim=-1)
    return list(features.split(counts))


# ---------------------------------------------------------------------- prompted class texts, shared prefix
@dataclass
class _TextLayout:
    """Where each class's own tokens sit: unpadded rows for the per-token work, a padded grid for attention."""

    suffix_tokens: torch.Tensor  # (N,) token ids of every class's positions P..EOT, class after class
    suffix_positions: torch.Tensor  # (N,) their positions in the sequence
    grid: torch.Tensor  # (rows * width,) index into the N tokens (or N: an empty slot) of each grid cell
    cells: torch.Tensor  # (N,) the grid cell of each of the N tokens, in order
    width: int  # the longest class's own tokens
    row_run: torch.Tensor  # (rows,) which packed model each class belongs to
    eot: torch.Tensor  # (rows,) index into the N tokens of each class's end-of-text token
    prefix_mask: torch.Tensor  # (P, P) causal attention among the prefix positions
    suffix_mask: torch.Tensor  # (width, P + width): a class token at column j sees the prefix and its tokens 0..j


def _text_layout(groups: list[torch.Tensor], owner: PromptedCLIP, key) -> _TextLayout:
    """The layout of ``groups`` (one (C_r, 77) token tensor per prefix: a packed model's classes, or one image's
    classes under conditional prompts), cached on ``owner`` under ``key`` (with the tokens' version)."""
    key = (key, owner._classes_version, str(owner.class_tokens.device))
    cached = getattr(owner, "_layout_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    layout = _build_layout(groups, owner)
    owner._layout_cache = (key, layout)
    return layout


def _build_layout(groups: list[torch.Tensor], owner: PromptedCLIP) -> _TextLayout:
    """The layout of ``groups`` (uncached): see :func:`_text_layout`."""
    prefix = 1 + owner.config.text_ctx
    tokens = torch.cat(groups).cpu()
    row_run = torch.cat([torch.full((len(g),), r, dtype=torch.long) for r, g in enumerate(groups)])
    lengths = tokens.argmax(dim=-1) + 1 - prefix  # own tokens of each class, end-of-text included
    if int(lengths.min()) < 1:
        raise RuntimeError("a class prompt has no tokens after its context tokens")
    width = int(lengths.max())
    starts = torch.cumsum(lengths, 0) - lengths
    columns = torch.arange(width)
    valid = columns[None, :] < lengths[:, None]
    total = int(lengths.sum())
    grid = torch.where(valid, starts[:, None] + columns[None, :], torch.full_like(valid, total, dtype=torch.long))
    positions = (prefix + columns)[None, :].expand_as(valid)[valid]
    keys = torch.arange(prefix + width)
    device = owner.class_tokens.device
    # Everything indexed by a mask is turned into indices here, once: boolean indexing on a GPU waits for
    # the host, and this layout is used every step.
    return _TextLayout(
        suffix_tokens=tokens[:, prefix : prefix + width][valid].to(device),
        suffix_positions=positions.to(device),
        grid=grid.flatten().to(device),
        cells=valid.flatten().nonzero().squeeze(1).to(device),
        width=width,
        row_run=row_run.to(device),
        eot=(starts + lengths - 1).to(device),
        prefix_mask=torch.ones(prefix, prefix, dtype=torch.bool).tril().to(device),
        suffix_mask=((keys[None, :] < prefix) | (keys[None, :] - prefix <= columns[:, None])).to(device),
    )


def _attend(attn: nn.MultiheadAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> torch.Tensor:
    """Multi-head attention of (B, Lq, D) queries over (B, Lk, D) keys/values already projected; merged heads."""
    heads = attn.num_heads
    b, lq, width = q.shape

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, width // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(b, lq, width)


def shared_prefix_text(models: list[PromptedCLIP]) -> list[torch.Tensor]:
    """Normalised prompted class-text features of each model (C_r, D) in one pass over the shared backbone.

    Per layer, the R prefixes (start token + that model's n prompts, (R, P, width)) run through the block
    once; every class's own tokens run unpadded through the projections and MLP as (N, width), and attend,
    in a padded (C, width_s) grid, to their model's prefix keys and to their own earlier tokens.
    """
    first = models[0]
    key = ("packed", tuple((id(m), m._classes_version) for m in models))
    heads = [torch.stack([m.text_prompts[i] for m in models]) for i in range(first.config.text_depth)]
    features = _layout_forward(first, [m.class_tokens for m in models], key, heads)
    return list(features.split([len(m.class_tokens) for m in models]))


def _layout_forward(first: PromptedCLIP, groups: list[torch.Tensor], key, heads: list[torch.Tensor]) -> torch.Tensor:
    """Normalised features (rows, D) of the prompted class texts of ``groups`` (group r with the prefix prompts
    ``heads[i][r]``), as :func:`_prefix_forward`.

    With ``first.text_chunk`` = N > 0 while gradients are recorded, the rows (all groups' classes, in order) are
    encoded N at a time, each chunk under ``torch.utils.checkpoint`` (non-reentrant): its activations are freed
    after its forward and recomputed in the backward pass, one chunk at a time. Each chunk recomputes the prefixes
    of the groups it touches (1 + n positions, small). The features equal the one-pass ones up to float rounding.
    Without gradients (evaluation, frozen paths) the one-pass forward runs: nothing is stored there anyway.
    """
    chunk = int(first.text_chunk or 0)
    rows = sum(len(g) for g in groups)
    recording = torch.is_grad_enabled() and any(h.requires_grad for h in heads)
    if chunk <= 0 or chunk >= rows or not recording:
        return _prefix_forward(first, _text_layout(groups, first, key), heads)
    parts = [
        checkpoint(_prefix_forward_of, first, layout, *[h[lo:hi] for h in heads], use_reentrant=False)
        for layout, lo, hi in _chunk_layouts(groups, first, key, chunk)
    ]
    return torch.cat(parts)


def _prefix_forward_of(first: PromptedCLIP, layout: _TextLayout, *heads: torch.Tensor) -> torch.Tensor:
    """:func:`_prefix_forward` with the prompts as separate arguments (what ``checkpoint`` passes)."""
    return _prefix_forward(first, layout, list(heads))


def _chunk_layouts(groups: list[torch.Tensor], owner: PromptedCLIP, key, chunk: int):
    """The layouts of ``groups``' rows ``chunk`` at a time, each with the range [lo, hi) of the groups (prefixes)
    it holds rows of; cached on ``owner`` as :func:`_text_layout` caches its one layout."""
    key = (key, chunk, owner._classes_version, str(owner.class_tokens.device))
    cached = getattr(owner, "_chunk_layout_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    offsets = [0]
    for g in groups:
        offsets.append(offsets[-1] + len(g))
    layouts = []
    for start in range(0, offsets[-1], chunk):
        end = min(start + chunk, offsets[-1])
        runs = [r for r in range(len(groups)) if offsets[r] < end and offsets[r + 1] > start]
        parts = [groups[r][max(start, offsets[r]) - offsets[r] : min(end, offsets[r + 1]) - offsets[r]] for r in runs]
        layouts.append((_build_layout(parts, owner), runs[0], runs[-1] + 1))
    owner._chunk_layout_cache = (key, layouts)
    return layouts


def _prefix_forward(first: PromptedCLIP, layout: _TextLayout, heads: list[torch.Tensor]) -> torch.Tensor:
    """Normalised features (rows, D) of the prompted class texts of ``layout``, whose R prefixes (start token +
    n prompts) get, at each prompted depth i, the prompts ``heads[i]`` (R, n, width)."""
    clip = first.clip
    depth, n = len(heads), first.config.text_ctx
    prefix = 1 + n
    embedding = clip.token_embedding
    positional = clip.positional_embedding
    dtype = first.dtype
    groups = heads[0].shape[0]
    start = embedding(first.class_tokens[:1, :1]).to(dtype)  # (1, 1, width): every class starts with the same token
    x_p = torch.cat([start.expand(groups, -1, -1), heads[0].to(dtype)], dim=1) + positional[:prefix].to(dtype)
    x_s = embedding(layout.suffix_tokens).to(dtype) + positional[layout.suffix_positions].to(dtype)  # (N, width)
    rows, width_s = len(layout.row_run), layout.width
    blocks = clip.transformer.resblocks
    for i, block in enumerate(blocks):
        if 0 < i < depth:
            x_p = torch.cat([x_p[:, :1], heads[i].to(x_p.dtype), x_p[:, prefix:]], dim=1)
        attn = block.attn
        w_qkv, b_qkv = attn.in_proj_weight, attn.in_proj_bias
        qkv_p = F.linear(block.ln_1(x_p), w_qkv, b_qkv)  # (R, P, 3w)
        qkv_s = F.linear(block.ln_1(x_s), w_qkv, b_qkv)  # (N, 3w)
        q_p, k_p, v_p = qkv_p.chunk(3, dim=-1)
        padded = torch.cat([qkv_s, qkv_s.new_zeros(1, qkv_s.shape[1])])[layout.grid].view(rows, width_s, -1)
        q_s, k_s, v_s = padded.chunk(3, dim=-1)
        keys = torch.cat([k_p[layout.row_run], k_s], dim=1)
        values = torch.cat([v_p[layout.row_run], v_s], dim=1)
        attended_s = _attend(attn, q_s, keys, values, layout.suffix_mask).reshape(rows * width_s, -1)
        attended_s = attended_s[layout.cells]  # back to the N real tokens, in order
        attended_p = _attend(attn, q_p, k_p, v_p, layout.prefix_mask)
        x_p = x_p + block.ls_1(attn.out_proj(attended_p))
        x_s = x_s + block.ls_1(attn.out_proj(attended_s))
        x_p = x_p + block.ls_2(block.mlp(block.ln_2(x_p)))
        x_s = x_s + block.ls_2(block.mlp(block.ln_2(x_s)))
    pooled = clip.ln_final(x_s[layout.eot])
    if clip.text_projection is not None:
        pooled = (
            clip.text_projection(pooled)
            if isinstance(clip.text_projection, nn.Linear)
            else pooled @ clip.text_projection
        )
    return F.normalize(pooled, dim=-1)
