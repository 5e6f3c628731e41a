"""Where a question lies relative to the labels an adapter knows: the Mahalanobis distance of its feature (the last
token's final hidden state, which the label head reads) to the nearest label's mean, with one covariance shared by
all labels, fitted on the training questions' features once training ends.

Why: softmax confidence says which label is likeliest, not whether any fits, and a question about something the
adapter never learned still gets a confident label. Its feature lies far from every label's questions, and distance
measures that (docs/training.md, "Questions outside the taxonomy"). It costs no second pass: the label head becomes an
`OpenSetHead`, whose output is the labels' logits plus one column, the distance, from the same forward pass (two small
matrix products per question).

The statistics travel with the adapter, in `qcat-open-set.safetensors` (safetensors only, like the weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from qcat.errors import AdapterError
from qcat.pytorch.model import label_features, right_pad

STATS = "qcat-open-set.safetensors"
FAR = 1e6
"""The squared distance to a label that had no training questions: never the nearest one."""


@dataclass(frozen=True)
class OpenSetStats:
    """Each label's mean feature (a label without training questions gets NaN) and the shared covariance's inverse
    square root (the whitening that turns Mahalanobis distance into a plain one)."""

    means: torch.Tensor
    whitening: torch.Tensor

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, classes: int) -> OpenSetStats:
        """From the training questions' features and label indices; the covariance is shrunk (Ledoit-Wolf) so that
        a few thousand questions in a thousand dimensions give a well-conditioned inverse."""
        from sklearn.covariance import LedoitWolf

        x = features.double().cpu()
        y = labels.cpu()
        means = torch.full((classes, x.shape[1]), float("nan"), dtype=torch.float64)
        for label in y.unique().tolist():
            means[label] = x[y == label].mean(dim=0)
        centred = (x - means[y]).numpy()
        covariance = LedoitWolf(assume_centered=True).fit(centred).covariance_
        values, vectors = np.linalg.eigh(covariance)
        whitening = vectors @ np.diag(1.0 / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T
        return cls(means.float(), torch.from_numpy(whitening).float())

    def save(self, directory: Path) -> None:
        save_file({"means": self.means.contiguous(), "whitening": self.whitening.contiguous()}, str(directory / STATS))

    @classmethod
    def load(cls, directory: Path) -> OpenSetStats:
        try:
            tensors = load_file(str(directory / STATS))
            stats = cls(tensors["means"], tensors["whitening"])
        except (OSError, KeyError, ValueError) as error:
            raise AdapterError(f"cannot read {directory / STATS}: {error}") from error
        if stats.whitening.shape != (stats.means.shape[1],) * 2:
            raise AdapterError(f"{directory / STATS} is inconsistent: means {tuple(stats.means.shape)}, whitening "
                               f"{tuple(stats.whitening.shape)}")  # fmt: skip
        return stats


class Distance(nn.Module):
    """Each feature row's Mahalanobis distance to the nearest label's mean (float32)."""

    whitening: torch.Tensor
    centres: torch.Tensor
    offsets: torch.Tensor

    def __init__(self, stats: OpenSetStats, device: torch.device | str = "cpu") -> None:
        super().__init__()
        whitening = stats.whitening.to(device)
        known = ~torch.isnan(stats.means).any(dim=1).to(device)
        centres = torch.nan_to_num(stats.means.to(device)) @ whitening.T
        self.register_buffer("whitening", whitening)
        self.register_buffer("centres", centres)
        self.register_buffer("offsets", torch.where(known, (centres * centres).sum(dim=1), FAR))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        whitened = features.float() @ self.whitening.T
        squared = (whitened * whitened).sum(dim=1, keepdim=True) - 2 * whitened @ self.centres.T + self.offsets
        distance: torch.Tensor = squared.min(dim=1).values.clamp_min(0).sqrt()
        return distance


class OpenSetHead(nn.Module):
    """The label head plus the distance: every label's logit, then the question's distance to the nearest label's
    mean, in one float32 output."""

    def __init__(self, head: nn.Module, stats: OpenSetStats) -> None:
        super().__init__()
        weight: torch.Tensor = head.weight  # type: ignore[assignment]
        if stats.means.shape != weight.shape:
            raise AdapterError(
                f"open-set statistics for {tuple(stats.means.shape)} (labels x features) do not fit the label head "
                f"{tuple(weight.shape)}"
            )
        self.head = head
        self.distance = Distance(stats, weight.device)

    @property
    def weight(self) -> torch.Tensor:
        """The label head's rows (what quantization and fingerprints read of a head)."""
        weight: torch.Tensor = self.head.weight  # type: ignore[assignment]
        return weight

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(features)
        return torch.cat([logits, self.distance(features)[:, None]], dim=1)


@torch.inference_mode()
def question_features(
    lm: nn.Module, rows: Sequence[Sequence[int]], pad_id: int, chunks: list[list[int]]
) -> torch.Tensor:
    """The feature of each encoded prompt (float32, on the CPU, in input order), pass by pass as `chunks` groups
    them (the engine's `chunks`)."""
    device = next(lm.parameters()).device
    out: torch.Tensor | None = None
    for chunk in chunks:
        batch, last = right_pad([rows[index] for index in chunk], pad_id)
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            features = label_features(lm, batch.to(device), last.to(device)).float().cpu()
        if out is None:
            out = torch.empty((len(rows), features.shape[1]), dtype=torch.float32)
        out[chunk] = features
    assert out is not None
    return out
