"""Segmentation scores over the defect classes: mIoU and Dice from an accumulated confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from weldstream.tiles import segment_maps


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


def mean_iou(confusions: np.ndarray) -> np.ndarray:
    """mIoU over defect classes for a stack of (K, K) confusion matrices (..., K, K) -> (...).

    The same rule as score_confusion, vectorised: classes absent from truth and prediction are left out
    of the mean, and a matrix with no defect pixels at all scores 1.
    """
    cm = np.asarray(confusions, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    union = cm.sum(axis=-2) + cm.sum(axis=-1) - tp
    defect_tp, defect_union = tp[..., 1:], union[..., 1:]
    present = defect_union > 0
    iou_sum = np.where(present, defect_tp / np.maximum(defect_union, 1), 0.0).sum(axis=-1)
    count = present.sum(axis=-1)
    return np.where(count > 0, iou_sum / np.maximum(count, 1), 1.0)


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
def scan_confusions(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, batch_size: int = 16,
                    num_classes: int | None = None, stride: int = 1) -> np.ndarray:
    """One (K, K) confusion matrix per scan, (N, K, K) int64: summed they give the set's score, and kept
    apart they let two models be compared scan by scan. Restores the model's train mode after.

    ``stride`` > 1 pads inputs (as the server does) so sides that do not divide by it are scored too.
    """
    return scan_results(model, images, masks, batch_size, num_classes, stride)[0]


@torch.no_grad()
def scan_results(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, batch_size: int = 16,
                 num_classes: int | None = None, stride: int = 1, with_features: bool = False
                 ) -> tuple[np.ndarray, torch.Tensor | None]:
    """``scan_confusions``, and with ``with_features`` the same pass's pooled encoder features per scan
    (N, C), as the server computes them (weldstream.features): one forward gives a candidate's score and
    the drift reference its manifest carries."""
    was_training = model.training
    model.eval()
    parts, features = [], []
    for start in range(0, len(images), batch_size):
        maps = segment_maps(model, images[start:start + batch_size], stride, with_features=with_features)
        pred = maps.classes.long()
        k = num_classes or _class_count(model)
        target = masks[start:start + batch_size]
        scan = torch.arange(len(pred), device=pred.device).view(-1, 1, 1).expand_as(pred)
        index = (scan * k + target.long()) * k + pred
        parts.append(torch.bincount(index.reshape(-1), minlength=len(pred) * k * k).reshape(len(pred), k, k))
        if maps.features is not None:
            features.append(maps.features.float().cpu())
    model.train(was_training)
    if not parts:
        raise ValueError("cannot score an empty validation set")
    return torch.cat(parts).cpu().numpy(), torch.cat(features) if features else None


def _class_count(model: torch.nn.Module) -> int:
    """Output classes of a segmentation network: the channels of its last convolution (its head), the
    polarity head's aside (weldstream.polarity)."""
    convs = [m for name, m in model.named_modules()
             if isinstance(m, torch.nn.Conv2d) and not name.startswith("polarity.")]
    if not convs:
        raise ValueError("cannot tell the class count of a model without convolutions; pass num_classes")
    return convs[-1].out_channels


def evaluate(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, batch_size: int = 16,
             num_classes: int | None = None) -> SegmentationScore:
    """Score a model on preprocessed images (N, C, H, W) and masks (N, H, W)."""
    return score_confusion(scan_confusions(model, images, masks, batch_size, num_classes).sum(axis=0), len(images))
