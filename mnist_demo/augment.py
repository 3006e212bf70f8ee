"""The seed's training augmentation, twice: a faithful per-sample torchvision pipeline and a batched
tensor version that draws the same per-sample parameter distributions.

Per-sample PIL transforms in a DataLoader cost ~30 s per MNIST epoch on 2 CPU cores; the batched
version does the same work as a few whole-batch tensor ops (well under 1 s per epoch) and runs on
whatever device the images are on.

Differences of the batched path from torchvision that are deliberate:

* rotation and affine are composed into one matrix and resampled once (torchvision resamples
  twice, losing a little more of the digit to two nearest-neighbour roundings);
* intermediate results stay float instead of being rounded to uint8 between PIL steps.

Interpolation is NEAREST with fill 0, torchvision's default for ``RandomRotation`` and
``RandomAffine`` and so what the seed trained with; with one resampling instead of two its
blockiness is already smaller than the seed's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from torchvision import transforms

MEAN, STD = 0.1307, 0.3081
SIZE = 28  # MNIST side: translations and erasing boxes are drawn in pixels of this image
ERASE_ATTEMPTS = 10  # torchvision's RandomErasing tries this many boxes before giving up


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of each augmentation; zero (or ``None`` for blur) switches one off."""

    blur_kernel: int = 5
    blur_sigma: tuple[float, float] | None = (0.1, 2.0)
    rotation: float = 10.0
    affine_degrees: float = 5.0
    translate: tuple[float, float] = (0.1, 0.1)
    scale: tuple[float, float] = (0.9, 1.1)
    shear: float = 5.0
    erase_p: float = 0.5
    erase_scale: tuple[float, float] = (0.02, 0.25)
    erase_ratio: tuple[float, float] = (0.3, 3.3)

    def __post_init__(self) -> None:
        if self.blur_kernel < 0 or (self.blur_kernel and self.blur_kernel % 2 == 0):
            raise ValueError(f"blur_kernel must be 0 (off) or odd and positive, got {self.blur_kernel}")
        for name in ("blur_sigma", "scale", "erase_scale", "erase_ratio"):
            rng = getattr(self, name)
            if rng is None:
                continue
            lowest_ok = 0.0 <= rng[0] if name == "erase_scale" else 0.0 < rng[0]  # the rest divide or log
            if not (lowest_ok and rng[0] <= rng[1]):
                raise ValueError(f"{name} must be an increasing (lo, hi) with lo > 0 (>= 0 for erase_scale)")
        if not 0.0 <= self.erase_p <= 1.0:
            raise ValueError(f"erase_p must lie in [0, 1], got {self.erase_p}")

    @classmethod
    def seed(cls) -> AugmentConfig:
        """Exactly the seed's strengths (the defaults)."""
        return cls()

    def replace(self, **changes: Any) -> AugmentConfig:
        """A copy with some fields changed (configs are frozen so they can be shared safely)."""
        return dataclasses.replace(self, **changes)

    @property
    def blurs(self) -> bool:
        """Whether blurring is on: ``blur_sigma=None`` or ``blur_kernel=0`` switch it off."""
        return self.blur_sigma is not None and self.blur_kernel > 0


def normalize(images_01: torch.Tensor) -> torch.Tensor:
    """MNIST standardisation, the last step of both pipelines."""
    return (images_01 - MEAN) / STD


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B,28,28)``/``(B,1,28,28)`` -> float32 ``(B,1,28,28)`` in [0, 1] (``x/255``, as
    ``ToTensor``). Float input is taken to be in [0, 1] already and only cast and reshaped."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"expected (B,H,W) or (B,1,H,W) images, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.to(torch.float32) / 255.0
    return images.to(torch.float32)


def torchvision_transform(cfg: AugmentConfig) -> transforms.Compose:
    """The seed's per-sample pipeline (PIL image in, normalised ``(1,28,28)`` tensor out), with
    ``RandomErasing`` moved after ``ToTensor``: the seed's order crashes on the first erased image."""
    from torchvision import transforms  # imported when used: it costs two seconds at every start

    steps: list[Any] = []
    if cfg.blurs:
        steps.append(transforms.GaussianBlur(cfg.blur_kernel, sigma=cfg.blur_sigma))
    steps += [
        transforms.RandomRotation(cfg.rotation),
        transforms.RandomAffine(cfg.affine_degrees, translate=cfg.translate, scale=cfg.scale, shear=cfg.shear),
        transforms.ToTensor(),
        transforms.RandomErasing(p=cfg.erase_p, scale=cfg.erase_scale, ratio=cfg.erase_ratio, value=0),
        transforms.Normalize((MEAN,), (STD,)),
    ]
    return transforms.Compose(steps)


def eval_transform() -> transforms.Compose:
    """Validation/test pipeline: no augmentation, same normalisation."""
    from torchvision import transforms  # imported when used: it costs two seconds at every start

    return transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])


class BatchedAugment:
    """Per-sample random augmentation applied to a whole batch with tensor ops.

    Parameters follow torchvision's ``get_params`` distributions exactly (uniform sigma, angles,
    scale and x-shear; translations ``round(uniform(-max, max))`` pixels; erasing boxes from up to
    10 area/log-ratio attempts, none kept -> no erasing). ``generator`` makes runs reproducible
    (parameters are drawn on its device and moved to the images'); without one, the global CPU RNG
    (``torch.manual_seed``) is used.
    """

    def __init__(self, cfg: AugmentConfig, generator: torch.Generator | None = None) -> None:
        self.cfg = cfg
        self.generator = generator

    def sample(self, batch: int, device: torch.device | str) -> dict[str, torch.Tensor]:
        """Draw one set of parameters per sample (on the generator's device, returned on ``device``).

        Keys: ``sigma`` (0 when blur is off), ``rotation`` and ``affine_angle`` (degrees),
        ``translate_x``/``translate_y`` (integer-valued pixels), ``scale``, ``shear`` (x-shear,
        degrees), ``erase`` (bool) and the box ``erase_i``/``erase_j``/``erase_h``/``erase_w``
        (int64, all 0 where ``erase`` is False), in pixels of a ``SIZE`` x ``SIZE`` image.
        """
        cfg, u = self.cfg, self._uniform
        sigma = cfg.blur_sigma if cfg.blurs else None
        params = {
            "sigma": u(batch, *sigma) if sigma is not None else torch.zeros(batch, device=self._device),
            "rotation": u(batch, -cfg.rotation, cfg.rotation),
            "affine_angle": u(batch, -cfg.affine_degrees, cfg.affine_degrees),
            "translate_x": torch.round(u(batch, -cfg.translate[0] * SIZE, cfg.translate[0] * SIZE)),
            "translate_y": torch.round(u(batch, -cfg.translate[1] * SIZE, cfg.translate[1] * SIZE)),
            "scale": u(batch, *cfg.scale),
            "shear": u(batch, -cfg.shear, cfg.shear),
            **self._sample_erase(batch, SIZE, SIZE),
        }
        return {key: value.to(device) for key, value in params.items()}

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Augment with given parameters (from :meth:`sample`, or forced ones in tests)."""
        x = to_unit(images)
        if self.cfg.blurs:
            x = gaussian_blur(x, params["sigma"].to(x.device), self.cfg.blur_kernel)
        x = warp(x, geometry_matrix(params, x.shape[-2], x.shape[-1]).to(x.device))
        x = erase(x, *(params[k].to(x.device) for k in ("erase", "erase_i", "erase_j", "erase_h", "erase_w")))
        return normalize(x)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float ``(B,1,28,28)`` -> augmented, normalised float32, same device."""
        return self.apply(images, self.sample(images.shape[0], images.device))

    @property
    def _device(self) -> torch.device:
        return self.generator.device if self.generator is not None else torch.device("cpu")

    def _uniform(self, shape: int | tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
        """``uniform(lo, hi)`` as torchvision's ``torch.empty(1).uniform_(lo, hi)``, but batched."""
        r = torch.rand(shape, generator=self.generator, device=self._device)
        return lo + (hi - lo) * r

    def _sample_erase(self, batch: int, height: int, width: int) -> dict[str, torch.Tensor]:
        """``RandomErasing``'s coin and box, with its 10 attempts drawn at once and the first that
        fits kept; a sample with no fitting attempt is not erased, as in torchvision."""
        cfg = self.cfg
        coin = self._uniform(batch, 0.0, 1.0) < cfg.erase_p
        area = height * width * self._uniform((batch, ERASE_ATTEMPTS), *cfg.erase_scale)
        ratio = torch.exp(self._uniform((batch, ERASE_ATTEMPTS), *map(math.log, cfg.erase_ratio)))
        h_all = torch.round(torch.sqrt(area * ratio)).long()
        w_all = torch.round(torch.sqrt(area / ratio)).long()
        fits = (h_all < height) & (w_all < width)
        first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first maximum
        erase = coin & fits.any(dim=1)
        h = torch.where(erase, h_all.gather(1, first).squeeze(1), 0)
        w = torch.where(erase, w_all.gather(1, first).squeeze(1), 0)
        i = _randint_below(self._uniform(batch, 0.0, 1.0), height - h + 1)
        j = _randint_below(self._uniform(batch, 0.0, 1.0), width - w + 1)
        zero = torch.zeros_like(h)
        return {
            "erase": erase,
            "erase_i": torch.where(erase, i, zero),
            "erase_j": torch.where(erase, j, zero),
            "erase_h": h,
            "erase_w": w,
        }


def _randint_below(unit: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Uniform integers in ``[0, n)`` from uniforms in ``[0, 1)`` (``torch.randint`` takes no
    per-element bound); clamped because float rounding can reach ``n``."""
    return torch.minimum((unit * n).long(), n - 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Per-sample Gaussian blur as two depthwise 1-D convolutions (the kernel is separable), with
    torchvision's kernel (``exp(-x^2/2s^2)`` on integer offsets, normalised) and reflect padding."""
    b, c, h, w = x.shape
    half = (kernel - 1) * 0.5
    offsets = torch.linspace(-half, half, kernel, device=x.device)
    k1d = torch.exp(-0.5 * (offsets / sigma[:, None]) ** 2)
    k1d = (k1d / k1d.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, k)
    pad = kernel // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect").reshape(1, b * c, h + 2 * pad, w + 2 * pad)
    x = F.conv2d(x, k1d[:, None, :, None], groups=b * c)
    x = F.conv2d(x, k1d[:, None, None, :], groups=b * c)
    return x.reshape(b, c, h, w)


def inverse_affine(
    angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, scale: torch.Tensor, shear_x: torch.Tensor
) -> torch.Tensor:
    """Batched ``torchvision.transforms.functional._get_inverse_affine_matrix`` (centre 0, y-shear 0)
    as ``(B,3,3)``: maps output pixel coordinates, centred on the image, to input ones."""
    rot, sx = torch.deg2rad(angle), torch.deg2rad(shear_x)
    a, c = torch.cos(rot), torch.sin(rot)
    b = -torch.cos(rot) * torch.tan(sx) - torch.sin(rot)
    d = -torch.sin(rot) * torch.tan(sx) + torch.cos(rot)
    m00, m01, m10, m11 = d / scale, -b / scale, -c / scale, a / scale
    rows = [
        torch.stack([m00, m01, -(m00 * tx + m01 * ty)], dim=1),
        torch.stack([m10, m11, -(m10 * tx + m11 * ty)], dim=1),
        torch.tensor([0.0, 0.0, 1.0], dtype=angle.dtype, device=angle.device).expand(len(angle), 3),
    ]
    return torch.stack(rows, dim=1)


def geometry_matrix(params: dict[str, torch.Tensor], height: int, width: int) -> torch.Tensor:
    """``RandomRotation`` then ``RandomAffine`` as ONE inverse map, normalised for ``affine_grid``.

    torchvision rotates by ``angle`` counter-clockwise via the affine matrix of ``-angle``; output
    = affine(rotate(input)), so input coordinates = rotate^-1(affine^-1(output coordinates)).
    """
    zero = torch.zeros_like(params["rotation"])
    rotate_inv = inverse_affine(-params["rotation"], zero, zero, torch.ones_like(zero), zero)
    affine_inv = inverse_affine(
        params["affine_angle"], params["translate_x"], params["translate_y"], params["scale"], params["shear"]
    )
    m = (rotate_inv @ affine_inv)[:, :2]
    # Centred pixel coordinates -> affine_grid's [-1, 1] (align_corners=False): x / (W/2), y / (H/2).
    rescale = torch.tensor(
        [[1.0, height / width, 2.0 / width], [width / height, 1.0, 2.0 / height]], dtype=m.dtype, device=m.device
    )
    return m * rescale


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """One nearest-neighbour resampling per batch, fill 0 (black background) outside the input."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def erase(
    x: torch.Tensor, flag: torch.Tensor, i: torch.Tensor, j: torch.Tensor, h: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    """Set each flagged sample's box ``[i:i+h, j:j+w]`` to 0 (background, before ``normalize``)."""
    rows = torch.arange(x.shape[-2], device=x.device)
    cols = torch.arange(x.shape[-1], device=x.device)
    in_rows = (rows >= i[:, None]) & (rows < (i + h)[:, None])
    in_cols = (cols >= j[:, None]) & (cols < (j + w)[:, None])
    box = in_rows[:, :, None] & in_cols[:, None, :] & flag[:, None, None]
    return x.masked_fill(box[:, None], 0.0)
