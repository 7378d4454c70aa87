"""Point-wise baselines: each fine-tuned feature is tied to its own pre-trained feature.

``PointwiseL1`` is PromptSRC's consistency terms without its prompt ensembling; ``KgCoOpLoss`` is
KgCoOp's pull of the prompted class text features towards the hand-crafted prompt's. Both are the
"point-wise constraints" that Prompt-OT's transport term is compared with. ``PromptSRCLoss`` is PromptSRC's
whole self-regulating term: both L1 terms plus the KL between the zero-shot and the prompted logits.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from prompt_ot.errors import UserError
from prompt_ot.losses.base import Regulariser, RegulariserInputs, check_positive


class PointwiseL1(Regulariser):
    """image_weight * mean|f_i - g_i| + text_weight * mean|T_c - S_c| (element-wise means, all classes).

    A weight of 0 drops that term (an image-only or text-only ablation); both 0 is an error.
    """

    def __init__(self, image_weight: float = 10.0, text_weight: float = 25.0):
        super().__init__()
        self.image_weight = check_positive("image_weight", image_weight, allow_zero=True)
        self.text_weight = check_positive("text_weight", text_weight, allow_zero=True)
        if self.image_weight == 0 and self.text_weight == 0:
            raise UserError("pointwise_l1 needs image_weight > 0 or text_weight > 0; both are 0")

    @property
    def needs_frozen_image(self) -> bool:
        return self.image_weight > 0

    def forward(self, inputs: RegulariserInputs) -> Tensor:
        loss = self.text_weight * F.l1_loss(inputs.class_text, inputs.frozen_class_text)
        if self.image_weight > 0:
            if inputs.image is None or inputs.frozen_image is None:
                raise ValueError("PointwiseL1 with image_weight > 0 needs image and frozen_image features")
            loss = loss + self.image_weight * F.l1_loss(inputs.image, inputs.frozen_image)
        return loss

    def extra_repr(self) -> str:
        return f"image_weight={self.image_weight}, text_weight={self.text_weight}"


class KgCoOpLoss(Regulariser):
    """weight * (1 - mean_c cos(T_c, S_c)): KgCoOp's knowledge-guided term on the class text features."""

    needs_frozen_image = False

    def __init__(self, weight: float = 8.0):
        super().__init__()
        self.weight = check_positive("weight", weight)

    def forward(self, inputs: RegulariserInputs) -> Tensor:
        similarity = F.cosine_similarity(inputs.class_text, inputs.frozen_class_text, dim=-1)
        return self.weight * (1.0 - similarity.mean())

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


class PromptSRCLoss(Regulariser):
    """PromptSRC's self-regulating constraints (muzairkhattak/PromptSRC ``trainers/promptsrc.py``):

    text_weight * mean|T_c - S_c| + image_weight * mean|f_i - g_i| + logit_weight * KL(p_zs || p) / (B * C),

    element-wise means over (C, D) and (B, D); S_c the frozen class texts (the 60-template ensemble),
    g_i the frozen features of the same views; p = softmax of the prompted logits, p_zs = softmax of
    logit_scale * g_i . S_c (both at temperature 1), the KL summed over the batch and divided by B * C.
    """

    needs_frozen_image = True

    def __init__(self, image_weight: float = 10.0, text_weight: float = 25.0, logit_weight: float = 1.0):
        super().__init__()
        self.image_weight = check_positive("image_weight", image_weight, allow_zero=True)
        self.text_weight = check_positive("text_weight", text_weight, allow_zero=True)
        self.logit_weight = check_positive("logit_weight", logit_weight, allow_zero=True)

    def forward(self, inputs: RegulariserInputs) -> Tensor:
        if inputs.image is None or inputs.frozen_image is None or inputs.logit_scale is None:
            raise ValueError("PromptSRCLoss needs image and frozen_image features and the logit scale")
        text = F.l1_loss(inputs.class_text, inputs.frozen_class_text)
        image = F.l1_loss(inputs.image, inputs.frozen_image)
        logits = (
            inputs.logits if inputs.logits is not None else inputs.logit_scale * inputs.image @ inputs.class_text.t()
        )
        logits = logits.float()
        zero_shot = (inputs.logit_scale * inputs.frozen_image @ inputs.frozen_class_text.t()).float()
        kl = (
            F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(zero_shot, dim=1), reduction="sum", log_target=True)
            / logits.numel()
        )
        return self.text_weight * text + self.image_weight * image + self.logit_weight * kl

    def extra_repr(self) -> str:
        return f"image_weight={self.image_weight}, text_weight={self.text_weight}, logit_weight={self.logit_weight}"
