"""Segmentation scores over the defect classes: mIoU and Dice from an accumulated confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts, rows = truth, columns = prediction, on the tensors' device."""
    index = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class SegmentationScore:
    miou: float
    dice: float
    per_class_iou: tuple[float, ...]
    samples: int


def score_confusion(confusion: np.ndarray | torch.Tensor, samples: int) -> SegmentationScore:
    """Mean IoU and Dice over defect classes (class 0, background, excluded).

    A class that appears in neither truth nor prediction is left out of the mean rather than counted
    as perfect, so a domain without inclusions does not inflate its score.
    """
    cm = np.asarray(confusion.cpu() if isinstance(confusion, torch.Tensor) else confusion, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    union = tp + fp + fn
    present = union[1:] > 0
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    dice = np.where(union > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), np.nan)
    if not present.any():
        return SegmentationScore(1.0, 1.0, tuple(float(v) for v in iou), samples)
    return SegmentationScore(
        miou=float(np.nanmean(iou[1:])),
        dice=float(np.nanmean(dice[1:])),
        per_class_iou=tuple(float(v) for v in iou),
        samples=samples,
    )


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, batch_size: int = 16,
             num_classes: int | None = None) -> SegmentationScore:
    """Score a model on preprocessed images (N, C, H, W) and masks (N, H, W); restores train mode after."""
    was_training = model.training
    model.eval()
    confusion = None
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size])
        k = num_classes or logits.shape[1]
        cm = confusion_matrix(logits.argmax(1), masks[start:start + batch_size], k)
        confusion = cm if confusion is None else confusion + cm
    model.train(was_training)
    if confusion is None:
        raise ValueError("cannot score an empty validation set")
    return score_confusion(confusion, len(images))
