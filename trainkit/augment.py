"""Data augmentation on whole training batches, on the run's device.

Every sample draws its own random flip, shift, rotation, zoom and erased rectangle, but the work
is a handful of tensor ops per batch, not a Python loop per sample (torchvision's per-sample
transforms cost far more per sample on the CPU). Only training batches are augmented.
Pixels shifted or rotated in from outside the image are black (0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig


class Augment:
    """uint8 images [N, C, H, W] -> float images [N, C, H, W] on the 0..255 scale."""

    def __init__(self, cfg: DictConfig) -> None:
        self.hflip = cfg.hflip
        self.translate = cfg.translate
        self.rotate = cfg.rotate
        self.zoom = tuple(cfg.zoom)
        self.erase = cfg.erase
        self.erase_area = tuple(cfg.erase_area)

    @property
    def active(self) -> bool:
        return (self.hflip > 0 or self.translate > 0 or self.rotate > 0
                or self.zoom != (1.0, 1.0) or self.erase > 0)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.hflip > 0:
            x = random_hflip(x, self.hflip)
        if self.translate > 0:
            x = random_translate(x, self.translate)
        if self.rotate > 0 or self.zoom != (1.0, 1.0):
            x = random_rotate_zoom(x, self.rotate, self.zoom)
        if self.erase > 0:
            x = random_erase(x, self.erase, self.erase_area)
        return x


def random_hflip(x: torch.Tensor, p: float) -> torch.Tensor:
    flip = torch.rand(len(x), device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_translate(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """Shift each image by its own (dy, dx) in [-pixels, pixels]: a random crop of the image
    padded by `pixels` on every side. Each crop is read from a strided view of all windows of
    the padded batch: much faster on the CPU than gathering pixel by pixel with four index
    tensors."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pixels, pixels, pixels, pixels))
    dy = torch.randint(0, 2 * pixels + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * pixels + 1, (n,), device=x.device)
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # [N, C, 2p+1, 2p+1, H, W], no copy
    return windows[torch.arange(n, device=x.device), :, dy, dx]


def random_rotate_zoom(x: torch.Tensor, degrees: float, zoom: tuple[float, float]) -> torch.Tensor:
    """Rotate by an angle in [-degrees, degrees] and scale by a factor in `zoom`, per sample,
    with one affine grid and one bilinear resampling for the batch."""
    n = len(x)
    angle = (torch.rand(n, device=x.device) * 2 - 1) * math.radians(degrees)
    scale = torch.empty(n, device=x.device).uniform_(*zoom)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale  # output -> input mapping
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


ERASE_ASPECT = (0.3, 3.3)  # the erased rectangle's height/width range (Zhong et al. 2017)


def random_erase(x: torch.Tensor, p: float, area: tuple[float, float]) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017): with probability p, each image gets one rectangle of
    its own size (a fraction `area` of the image, aspect ratio 0.3..3.3), position and random
    pixel values (0..255; each channel its own). The rectangles are masks built from row and
    column ranges: no loop over the batch. Areas up to 0.3 of the image fit at any aspect ratio
    (config.MAX_ERASE); the clamp only catches the rounding of a side."""
    n, _, h, w = x.shape
    device = x.device
    size = torch.empty(n, device=device).uniform_(*area) * (h * w)
    log_aspect = torch.empty(n, device=device).uniform_(*(math.log(a) for a in ERASE_ASPECT))
    eh = (size * log_aspect.exp()).sqrt().round().clamp(1, h)
    ew = (size / log_aspect.exp()).sqrt().round().clamp(1, w)
    y0 = (torch.rand(n, device=device) * (h - eh + 1)).floor()
    x0 = (torch.rand(n, device=device) * (w - ew + 1)).floor()
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + eh)[:, None])  # [N, H]
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + ew)[:, None])  # [N, W]
    chosen = torch.rand(n, device=device) < p
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & chosen[:, None, None])[:, None]
    return torch.where(mask, torch.rand_like(x) * 255, x)


@dataclass(frozen=True)
class TestTimeViews:
    """Test-time augmentation: the views of each evaluation image whose logits are averaged.
    The image; with `shift`, its copies shifted by that many pixels up, down, left and right
    (black pixels shifted in, as in training's translate); with `hflip`, the mirror of each."""

    __test__ = False  # not a pytest test class, whatever its name
    hflip: bool = False
    shift: int = 0

    @classmethod
    def from_config(cls, augment: DictConfig) -> TestTimeViews:
        return cls(augment.tta_hflip, augment.tta_shift)

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        views = [images]
        if self.shift > 0:
            s, (h, w) = self.shift, images.shape[-2:]
            padded = F.pad(images, (s, s, s, s))
            offsets = ((0, s), (2 * s, s), (s, 0), (s, 2 * s))  # down, up, right, left
            views += [padded[..., y : y + h, x : x + w] for y, x in offsets]
        if self.hflip:
            views += [view.flip(-1) for view in views]
        return views


IMAGE_ONLY = TestTimeViews()  # no test-time augmentation
