"""Top-1 accuracy of a (prompted) CLIP on a labelled image set, given its class names."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Evaluation:
    accuracy: float  # in percent, full precision
    predictions: torch.Tensor  # (N,) predicted labels
    labels: torch.Tensor  # (N,) true labels
    n: int


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2BN / (B + N); 0 when both are 0."""
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


@torch.no_grad()
def classify_features(image_features: torch.Tensor, class_text: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Predicted labels of normalised image features against normalised class text features."""
    preds = [(chunk @ class_text.t()).argmax(-1) for chunk in image_features.split(batch_size)]
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def evaluate(
    model,
    dataset,
    classnames: list[str],
    template: str = "a photo of a {}.",
    batch_size: int = 128,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    class_text: torch.Tensor | None = None,
) -> Evaluation:
    """Accuracy of ``model`` (a ``PromptedCLIP``) on ``dataset`` of (image, label) over ``classnames``; ``class_text``
    (C, D) replaces the model's class texts (zero-shot's template ensemble)."""
    if device is None:
        device = next(model.parameters()).device
    model.to(device).eval()
    model.set_classnames(classnames, template)
    if class_text is None:
        class_text = None if model.conditional else model.class_text_features()
    else:
        class_text = class_text.to(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    preds, labels = [], []
    for batch in loader:
        images, y = batch[0], batch[1]
        features = model.image_features(images.to(device))
        if class_text is None:  # each image its own class prompts (CoCoOp)
            preds.append(model.conditional_logits(features).argmax(-1).cpu())
        else:
            preds.append(classify_features(features, class_text).cpu())
        labels.append(torch.as_tensor(y))
    preds_t = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    labels_t = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    return evaluated(preds_t, labels_t)


def ensemble(features: list[torch.Tensor]) -> torch.Tensor:
    """CLIP's prompt ensemble: the normalised mean of the normalised class-text features of each template."""
    mean = torch.stack([f / f.norm(dim=-1, keepdim=True) for f in features]).mean(0)
    return mean / mean.norm(dim=-1, keepdim=True)


def evaluated(predictions: torch.Tensor, labels: torch.Tensor) -> Evaluation:
    """The Evaluation of predicted against true labels (accuracy NaN for an empty set)."""
    n = int(labels.numel())
    accuracy = 100.0 * float((predictions == labels).sum()) / n if n else float("nan")
    return Evaluation(accuracy=accuracy, predictions=predictions, labels=labels.clone(), n=n)


def class_metrics(predictions: torch.Tensor, labels: torch.Tensor, classnames: list[str]) -> dict:
    """Per-class accuracy (the recall of each class with test images, in percent, keyed by class name), balanced
    accuracy (their mean: scikit-learn's ``balanced_accuracy_score``) and macro-F1 over all ``classnames`` (F1 0 for a
    class never predicted nor present: scikit-learn's ``f1_score(labels=range(C), average="macro",
    zero_division=0)``), both in percent."""
    n_classes = len(classnames)
    predictions, labels = predictions.long().cpu(), labels.long().cpu()
    true = torch.bincount(labels, minlength=n_classes)[:n_classes].double()
    predicted = torch.bincount(predictions, minlength=n_classes)[:n_classes].double()
    hits = torch.bincount(labels[predictions == labels], minlength=n_classes)[:n_classes].double()
    present = true > 0
    recall = torch.where(present, hits / true.clamp(min=1), torch.zeros_like(hits))
    denominator = true + predicted  # 2TP + FP + FN
    f1 = torch.where(denominator > 0, 2 * hits / denominator.clamp(min=1), torch.zeros_like(hits))
    return {
        "per_class_accuracy": {classnames[c]: 100.0 * float(recall[c]) for c in range(n_classes) if present[c]},
        "balanced_accuracy": 100.0 * float(recall[present].mean()) if present.any() else float("nan"),
        "macro_f1": 100.0 * float(f1.mean()) if n_classes else float("nan"),
    }
