"""The batched augmentation against torchvision: same parameter distributions (two-sample tests),
same per-operation geometry and blur, and the faithful per-sample pipeline."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from mnist_demo.augment import (
    MEAN,
    STD,
    AugmentConfig,
    BatchedAugment,
    eval_transform,
    normalize,
    to_unit,
    torchvision_transform,
)

SEED = AugmentConfig.seed()
OFF = AugmentConfig(
    blur_sigma=None, rotation=0.0, affine_degrees=0.0, translate=(0.0, 0.0), scale=(1.0, 1.0), shear=0.0, erase_p=0.0
)
BLACK = (0.0 - MEAN) / STD  # what an erased (or filled) pixel becomes after normalisation
N_BATCHED, N_TORCHVISION = 20_000, 6_000
KS_ALPHA = 1e-3  # per-comparison level; the seeds are fixed, so this sets power, not flakiness
FREQ_SIGMAS = 5.0  # tolerance of a frequency difference, in standard errors


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Per-sample torchvision calls are tiny ops: OpenMP threads spinning on shared cores (pytest
    -n 2 on two cores) make them ~20x slower, and one thread is as fast for 28x28 batches."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def digits(batch: int, seed: int = 0) -> torch.Tensor:
    """Random uint8 images of MNIST shape."""
    return torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


def forced(batch: int = 1, **values: float | bool) -> dict[str, torch.Tensor]:
    """Parameters for :meth:`BatchedAugment.apply` that do nothing except what ``values`` set."""
    params = {
        "sigma": torch.ones(batch),
        "rotation": torch.zeros(batch),
        "affine_angle": torch.zeros(batch),
        "translate_x": torch.zeros(batch),
        "translate_y": torch.zeros(batch),
        "scale": torch.ones(batch),
        "shear": torch.zeros(batch),
        "erase": torch.zeros(batch, dtype=torch.bool),
        **{k: torch.zeros(batch, dtype=torch.long) for k in ("erase_i", "erase_j", "erase_h", "erase_w")},
    }
    for key, value in values.items():
        params[key] = torch.full_like(params[key], value)
    return params


# ----------------------------------------------------------------------------------- API basics


def test_config_seed_replace_and_validation() -> None:
    assert AugmentConfig.seed() == AugmentConfig()
    assert SEED.blur_kernel == 5 and SEED.blur_sigma == (0.1, 2.0) and SEED.rotation == 10.0
    assert (SEED.affine_degrees, SEED.translate, SEED.scale, SEED.shear) == (5.0, (0.1, 0.1), (0.9, 1.1), 5.0)
    assert (SEED.erase_p, SEED.erase_scale, SEED.erase_ratio) == (0.5, (0.02, 0.25), (0.3, 3.3))
    assert SEED.replace(rotation=3.0).rotation == 3.0 and SEED.rotation == 10.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        SEED.rotation = 1.0  # type: ignore[misc]
    for bad in ({"blur_kernel": 4}, {"scale": (1.1, 0.9)}, {"erase_ratio": (0.0, 1.0)}, {"erase_p": 1.5}):
        with pytest.raises(ValueError):
            SEED.replace(**bad)


def test_to_unit_and_normalize() -> None:
    x = digits(4)
    unit = to_unit(x)
    assert unit.dtype == torch.float32 and unit.shape == (4, 1, 28, 28)
    assert torch.equal(unit, x.float() / 255)
    assert torch.equal(to_unit(x[:, 0]), unit)
    assert torch.allclose(normalize(unit), (unit - 0.1307) / 0.3081)
    assert torch.allclose(eval_transform()(Image.fromarray(x[0, 0].numpy(), mode="L")), normalize(unit[0]))


@pytest.mark.parametrize(
    "images",
    [digits(8), digits(8)[:, 0], digits(8).double() / 255, digits(8).float() / 255],
    ids=["uint8", "uint8-no-channel", "float64", "float32"],
)
def test_shapes_dtypes_range(images: torch.Tensor) -> None:
    out = BatchedAugment(SEED, torch.Generator().manual_seed(0))(images)
    assert out.shape == (8, 1, 28, 28) and out.dtype == torch.float32 and out.device == images.device
    # blur, nearest resampling and erasing never leave [0, 1] before normalisation
    assert out.min() >= BLACK - 1e-6 and out.max() <= (1 - MEAN) / STD + 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda_like_on_cpu() -> None:
    images = digits(64)
    cpu = BatchedAugment(SEED, torch.Generator().manual_seed(3))(images)
    gpu = BatchedAugment(SEED, torch.Generator().manual_seed(3))(images.cuda())
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    # same parameters; float differences may move a rare nearest-neighbour tie by one pixel
    assert (gpu.cpu() - cpu).abs().gt(1e-4).float().mean() < 1e-3


def test_deterministic_with_seeded_generator() -> None:
    images = digits(32)
    first = BatchedAugment(SEED, torch.Generator().manual_seed(7))(images)
    again = BatchedAugment(SEED, torch.Generator().manual_seed(7))(images)
    other = BatchedAugment(SEED, torch.Generator().manual_seed(8))(images)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_zero_strengths_are_the_identity() -> None:
    images = digits(16)
    out = BatchedAugment(OFF, torch.Generator().manual_seed(0))(images)
    assert torch.equal(out, normalize(to_unit(images)))


def test_sample_ranges_dtypes_device() -> None:
    p = BatchedAugment(SEED, torch.Generator().manual_seed(0)).sample(4096, "cpu")
    assert all(v.shape == (4096,) and v.device.type == "cpu" for v in p.values())
    assert p["sigma"].min() >= 0.1 and p["sigma"].max() <= 2.0
    assert p["rotation"].abs().max() <= 10 and p["affine_angle"].abs().max() <= 5 and p["shear"].abs().max() <= 5
    assert p["scale"].min() >= 0.9 and p["scale"].max() <= 1.1
    assert set(p["translate_x"].tolist()) == set(p["translate_y"].tolist()) == {-3, -2, -1, 0, 1, 2, 3}
    assert p["erase"].dtype == torch.bool and p["erase_h"].dtype == torch.long
    e = p["erase"]
    assert (p["erase_i"][e] + p["erase_h"][e]).max() <= 28 and (p["erase_j"][e] + p["erase_w"][e]).max() <= 28
    assert p["erase_i"][e].min() >= 0 and p["erase_h"][e].min() >= 1 and p["erase_h"][~e].max() == 0


# ------------------------------------------------------- parameter distributions vs torchvision


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def ks_threshold(n: int, m: int, alpha: float = KS_ALPHA) -> float:
    """Asymptotic critical value ``c(alpha) * sqrt((n + m) / (n m))`` (conservative for ties)."""
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n + m) / (n * m))


def frequency_gap(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference of a discrete value's frequency, in units of FREQ_SIGMAS standard errors."""
    gaps = []
    for value in np.union1d(a, b):
        fa, fb = (a == value).mean(), (b == value).mean()
        pooled = (fa * len(a) + fb * len(b)) / (len(a) + len(b))
        stderr = math.sqrt(pooled * (1 - pooled) * (1 / len(a) + 1 / len(b)))
        gaps.append(abs(fa - fb) / (FREQ_SIGMAS * stderr))
    return max(gaps)


CONTINUOUS = ("sigma", "rotation", "affine_angle", "scale", "shear", "erase_area", "erase_ratio")
DISCRETE = ("translate_x", "translate_y", "erase")


def discrepancy(key: str, a: np.ndarray, b: np.ndarray) -> float:
    """Test statistic over its threshold: below 1 means 'same distribution' at the chosen level."""
    if key in DISCRETE:
        return frequency_gap(a, b)
    return ks_statistic(a, b) / ks_threshold(len(a), len(b))


def with_boxes(params: dict[str, np.ndarray], erased: np.ndarray) -> dict[str, np.ndarray]:
    """Add the erased area fraction and aspect ratio of the boxes actually erased."""
    h, w = params["erase_h"][erased].astype(float), params["erase_w"][erased].astype(float)
    return {**params, "erase_area": h * w / 784, "erase_ratio": h / w}


def batched_draws(cfg: AugmentConfig, n: int = N_BATCHED) -> dict[str, np.ndarray]:
    p = {k: v.numpy() for k, v in BatchedAugment(cfg, torch.Generator().manual_seed(11)).sample(n, "cpu").items()}
    return with_boxes(p, p["erase"])


def step(cfg: AugmentConfig, kind: type) -> torch.nn.Module:
    """The torchvision transform of that kind inside our faithful pipeline."""
    return next(t for t in torchvision_transform(cfg).transforms if isinstance(t, kind))


def torchvision_draws(cfg: AugmentConfig, n: int = N_TORCHVISION) -> dict[str, np.ndarray]:
    """Parameters from torchvision's own ``get_params`` (and erasing's coin from its ``forward``)."""
    blur, rot = step(cfg, transforms.GaussianBlur), step(cfg, transforms.RandomRotation)
    aff, era = step(cfg, transforms.RandomAffine), step(cfg, transforms.RandomErasing)
    image = torch.ones(1, 28, 28)
    rows: list[tuple] = []
    with torch.random.fork_rng():
        torch.manual_seed(5)
        for _ in range(n):
            sigma = blur.get_params(*blur.sigma)
            rotation = rot.get_params(rot.degrees)
            angle, (tx, ty), scale, (shear, _) = aff.get_params(
                aff.degrees, aff.translate, aff.scale, aff.shear, [28, 28]
            )
            _, _, h, w, _ = era.get_params(image, scale=era.scale, ratio=era.ratio, value=[0.0])
            erased = bool((era(image) == 0).any())
            rows.append((sigma, rotation, angle, tx, ty, scale, shear, erased, h, w))
    keys = ("sigma", "rotation", "affine_angle", "translate_x", "translate_y", "scale", "shear",
            "erase", "erase_h", "erase_w")
    params = {k: np.array(col) for k, col in zip(keys, zip(*rows))}
    return with_boxes(params, np.ones(n, dtype=bool))  # get_params always returns the box it would erase


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return torchvision_draws(SEED)


@pytest.fixture(scope="module")
def ours() -> dict[str, np.ndarray]:
    return batched_draws(SEED)


@pytest.mark.parametrize("key", CONTINUOUS + DISCRETE)
def test_same_distribution_as_torchvision(key: str, ours, reference) -> None:
    assert discrepancy(key, ours[key], reference[key]) < 1.0


# Each range 20% off; the same comparison must notice, or the test above would prove nothing.
PERTURBED = {
    "sigma": {"blur_sigma": (0.1, 2.4)},
    "rotation": {"rotation": 12.0},
    "affine_angle": {"affine_degrees": 6.0},
    "scale": {"scale": (0.88, 1.12)},
    "shear": {"shear": 6.0},
    "translate_x": {"translate": (0.12, 0.1)},
    "translate_y": {"translate": (0.1, 0.12)},
    "erase": {"erase_p": 0.6},
    "erase_area": {"erase_scale": (0.02, 0.3)},
    "erase_ratio": {"erase_ratio": (0.3, 3.96)},
}


@pytest.mark.parametrize("key", sorted(PERTURBED))
def test_distribution_test_detects_a_range_20_percent_off(key: str, reference) -> None:
    assert discrepancy(key, batched_draws(SEED.replace(**PERTURBED[key]))[key], reference[key]) > 1.0


def test_translation_frequencies_match_the_rounding_formula(ours) -> None:
    """``round(uniform(-2.8, 2.8))``: each integer k gets the length of [k-.5, k+.5] inside the range."""
    expected = {k: (min(k + 0.5, 2.8) - max(k - 0.5, -2.8)) / 5.6 for k in range(-3, 4)}
    for k, p in expected.items():
        stderr = math.sqrt(p * (1 - p) / N_BATCHED)
        assert abs((ours["translate_x"] == k).mean() - p) < FREQ_SIGMAS * stderr


def test_erasing_falls_back_to_no_erasing_when_no_box_fits() -> None:
    """Boxes of 90-100% of the image fit only for aspect ratios near 1: most of 10 attempts fail."""
    cfg = SEED.replace(erase_p=1.0, erase_scale=(0.9, 1.0), erase_ratio=(0.3, 3.3))
    ours = batched_draws(cfg)
    era = step(cfg, transforms.RandomErasing)
    image = torch.ones(1, 28, 28)
    with torch.random.fork_rng():
        torch.manual_seed(2)
        theirs = np.array([bool((era(image) == 0).any()) for _ in range(2000)])
    assert 0.05 < ours["erase"].mean() < 0.95
    assert discrepancy("erase", ours["erase"], theirs) < 1.0


# ------------------------------------------------------------------------------ image level


def torchvision_op(name: str, image: torch.Tensor, p: dict[str, float]) -> torch.Tensor:
    """torchvision's tensor implementation of one operation with the given parameters."""
    if name == "blur":
        return TF.gaussian_blur(image, [5, 5], [p["sigma"], p["sigma"]])
    if name == "rotate":
        return TF.rotate(image, p["rotation"], InterpolationMode.NEAREST)
    translate = [int(p["translate_x"]), int(p["translate_y"])]
    return TF.affine(image, p["affine_angle"], translate, p["scale"], [p["shear"], 0.0], InterpolationMode.NEAREST)


@pytest.mark.parametrize(
    "name, keys",
    [
        ("blur", ("sigma",)),
        ("rotate", ("rotation",)),
        ("affine", ("affine_angle", "translate_x", "translate_y", "scale", "shear")),
    ],
)
def test_each_operation_matches_torchvision(name: str, keys: tuple[str, ...]) -> None:
    """With parameters drawn by ``sample``, each operation alone equals torchvision's tensor
    implementation (same kernel, same matrix, same NEAREST resampling with fill 0)."""
    images = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    drawn = BatchedAugment(SEED, torch.Generator().manual_seed(1)).sample(16, "cpu")
    cfg = OFF.replace(blur_sigma=SEED.blur_sigma) if name == "blur" else OFF
    out = unnormalize(BatchedAugment(cfg).apply(images, {**forced(16), **{k: drawn[k] for k in keys}}))
    for b in range(16):
        expected = torchvision_op(name, images[b], {k: drawn[k][b].item() for k in keys})
        assert torch.allclose(out[b], expected, atol=1e-5), b


def test_quarter_turn_moves_a_bright_pixel_where_the_rotation_matrix_says() -> None:
    """torchvision rotates counter-clockwise on screen: (x, y) -> (y, -x) about the centre for 90
    degrees (y down), which on a 28x28 grid is pixel (row r, col c) -> (27 - c, r)."""
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 3, 20] = 1.0
    out = unnormalize(BatchedAugment(OFF).apply(image, forced(rotation=90.0)))[0, 0]
    assert out[27 - 20, 3] == pytest.approx(1.0) and out.sum() == pytest.approx(1.0, abs=1e-4)


def centroid(image: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted (x, y) in pixel coordinates centred on the image."""
    h, w = image.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5 - h / 2, torch.arange(w) + 0.5 - w / 2, indexing="ij")
    return torch.stack([(image * xs).sum(), (image * ys).sum()]) / image.sum()


def test_rotation_then_affine_composes_like_torchvision_in_sequence() -> None:
    """A blob off the centre lands where torchvision's rotate-then-affine puts it (and not where the
    other order would)."""
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    blob = torch.exp(-((xs - 19) ** 2 + (ys - 8) ** 2) / (2 * 1.5**2))[None]
    geometry = {"rotation": 40.0, "affine_angle": -25.0, "translate_x": 3.0, "translate_y": -2.0, "scale": 1.1}
    out = unnormalize(BatchedAugment(OFF).apply(blob[None], forced(shear=20.0, **geometry)))[0]

    def affine(img: torch.Tensor) -> torch.Tensor:
        return TF.affine(img, -25.0, [3, -2], 1.1, [20.0, 0.0], InterpolationMode.NEAREST)

    in_order = affine(TF.rotate(blob, 40.0, InterpolationMode.NEAREST))
    reversed_order = TF.rotate(affine(blob), 40.0, InterpolationMode.NEAREST)
    assert torch.dist(centroid(out), centroid(in_order)) < 0.5
    assert torch.dist(centroid(out), centroid(reversed_order)) > 2.0


def test_erasing_zeroes_exactly_the_drawn_box() -> None:
    images = torch.ones(256, 1, 28, 28)
    aug = BatchedAugment(OFF.replace(erase_p=0.5), torch.Generator().manual_seed(4))
    params = aug.sample(256, "cpu")
    out = unnormalize(aug.apply(images, params))[:, 0]
    assert 0 < params["erase"].sum() < 256
    for b in range(256):
        expected = torch.ones(28, 28)
        if params["erase"][b]:
            i, j, h, w = (params[k][b].item() for k in ("erase_i", "erase_j", "erase_h", "erase_w"))
            expected[i : i + h, j : j + w] = 0.0
        assert torch.allclose(out[b], expected, atol=1e-6), b


@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
def test_blur_of_an_impulse_sums_to_one(sigma: float) -> None:
    impulse = torch.zeros(1, 1, 28, 28)
    impulse[0, 0, 14, 14] = 1.0
    out = unnormalize(BatchedAugment(OFF.replace(blur_sigma=(0.1, 2.0))).apply(impulse, forced(sigma=sigma)))[0, 0]
    assert out.sum() == pytest.approx(1.0, abs=1e-5)
    assert out.argmax().item() == 14 * 28 + 14 and torch.allclose(out, out.T, atol=1e-7)
    assert (out > 1e-7).sum() <= 25  # the 5x5 support


# ------------------------------------------------------------------- torchvision pipeline


def pil_digits(n: int) -> list[Image.Image]:
    return [Image.fromarray(x[0].numpy(), mode="L") for x in digits(n)]


def test_torchvision_pipeline_runs_on_pil_images_and_erases() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        outs = [torchvision_transform(SEED)(img) for img in pil_digits(32)]
        white = Image.fromarray(np.full((28, 28), 255, dtype=np.uint8), mode="L")
        # without geometry nothing but erasing can blacken a white image (its blur stays white)
        plain = torchvision_transform(OFF.replace(blur_sigma=SEED.blur_sigma, erase_p=0.5))
        erased = [plain(white) for _ in range(64)]
    assert all(o.shape == (1, 28, 28) and o.dtype == torch.float32 for o in outs)
    black = [torch.isclose(o[0], torch.tensor(BLACK), atol=1e-6) for o in erased]
    assert 16 <= sum(bool(m.any()) for m in black) <= 48  # p = 0.5
    for m in black:  # each erased region is one filled rectangle
        rows, cols = m.any(dim=1).nonzero(), m.any(dim=0).nonzero()
        if len(rows):
            assert m.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
