"""Whole-batch preprocessing on the training device: uint8 NHWC in, normalised
float NCHW at the model's input size out. No per-image Python, no PIL.

Augmentation parameters are drawn on the CPU from a generator seeded by
(seed, epoch), so an epoch's augmentation depends on nothing else: a resumed
run sees exactly the images an uninterrupted run would have seen. They are
drawn for every image of the epoch at once and copied to the device once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Augmentation:
    """Per-image crop offsets (B, 2) into the padded image and flips (B,)."""

    offsets: torch.Tensor
    flips: torch.Tensor
    padding: int

    @staticmethod
    def draw(count: int, padding: int, generator: torch.Generator) -> Augmentation:
        offsets = torch.randint(0, 2 * padding + 1, (count, 2), generator=generator)
        flips = torch.rand(count, generator=generator) < 0.5
        return Augmentation(offsets, flips, padding)

    def to(self, device: torch.device) -> Augmentation:
        """Copied once per epoch; `select` then indexes on the device without
        a per-step host-to-device copy (each one would be a sync)."""
        return Augmentation(self.offsets.to(device), self.flips.to(device), self.padding)

    def select(self, index: torch.Tensor) -> Augmentation:
        """The parameters of the images `index` (on the same device)."""
        return Augmentation(self.offsets[index], self.flips[index], self.padding)


class BatchTransform:
    def __init__(self, image_size: int, mean, std, device: torch.device, channels_last: bool):
        self.image_size = image_size
        self.channels_last = channels_last
        std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        # (x / 255 - mean) / std folded into one multiply-add.
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def __call__(self, images: torch.Tensor, augmentation: Augmentation | None = None) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        # Normalising before resizing gives the same result (both are linear)
        # on far fewer pixels when upsampling 32 -> 224.
        x = x * self.scale + self.shift
        if augmentation is not None:
            x = _crop_and_flip(x, augmentation)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            downsampling = x.shape[-1] > self.image_size
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=downsampling)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _crop_and_flip(x: torch.Tensor, aug: Augmentation) -> torch.Tensor:
    b, _, h, w = x.shape
    p = aug.padding
    if p > 0:
        x = F.pad(x, (p, p, p, p), mode="reflect")
        rows = aug.offsets[:, 0:1] + torch.arange(h, device=x.device)  # (B, H)
        cols = aug.offsets[:, 1:2] + torch.arange(w, device=x.device)  # (B, W)
        # One gather per axis keeps it a few batched kernels, whatever B is.
        x = torch.gather(x, 2, rows[:, None, :, None].expand(b, x.shape[1], h, x.shape[3]))
        x = torch.gather(x, 3, cols[:, None, None, :].expand(b, x.shape[1], h, w))
    return torch.where(aug.flips[:, None, None, None], x.flip(3), x)
