"""torchprobe.failures: every number checked against an independent numpy computation, the
hooks, the history, the exports and the pictures."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from collections import Counter
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchprobe.failures.analyzer as failures_module
import torchprobe.failures.metrics as metrics_module
from mnist_demo.model import Net
from torchprobe.failures import Failure, FailureAnalyzer, analyze_failures
from torchprobe.render import render_text

PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)


@st.composite
def predictions(
    draw: st.DrawFn, max_classes: int = 12, max_samples: int = 200
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Logits on a quarter grid (exact ties are common, near-ties never), targets, batch cuts."""
    c = draw(st.integers(2, max_classes))
    n = draw(st.integers(1, max_samples))
    logits = draw(hnp.arrays(np.int64, (n, c), elements=st.integers(-12, 12))).astype(np.float32) / 4
    targets = draw(hnp.arrays(np.int64, n, elements=st.integers(0, c - 1)))
    cuts = sorted(draw(st.sets(st.integers(1, n), max_size=6)) - {n})
    return logits, targets, [0, *cuts, n]


def fill(
    analyzer: FailureAnalyzer, logits: np.ndarray, targets: np.ndarray, bounds: list[int], **columns: np.ndarray
) -> FailureAnalyzer:
    for lo, hi in zip(bounds, bounds[1:]):
        extra = {name: torch.as_tensor(values[lo:hi]) for name, values in columns.items()}
        analyzer.update(torch.from_numpy(logits[lo:hi]), torch.from_numpy(targets[lo:hi]), **extra)
    return analyzer


class Reference:
    """The same quantities, from the label arrays, in float64 numpy: no code shared with the library."""

    def __init__(self, logits: np.ndarray, targets: np.ndarray) -> None:
        x = logits.astype(np.float64)
        p = np.exp(x - x.max(1, keepdims=True))
        self.p = p / p.sum(1, keepdims=True)
        self.c = logits.shape[1]
        self.targets = targets
        self.pred = x.argmax(1)  # the first maximum, as torch's max
        rows = np.arange(len(x))
        self.conf = self.p[rows, self.pred]
        self.self_conf = self.p[rows, targets]
        self.wrong = self.pred != targets

    def confusion(self) -> np.ndarray:
        cm = np.zeros((self.c, self.c), np.int64)
        for t, p in zip(self.targets, self.pred):
            cm[t, p] += 1
        return cm

    def per_class(self) -> list[dict]:
        rows = []
        for k in range(self.c):
            tp = np.sum((self.pred == k) & (self.targets == k))
            predicted, support = np.sum(self.pred == k), np.sum(self.targets == k)
            precision = tp / predicted if predicted else 0.0
            recall = tp / support if support else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            rows.append({"class": k, "precision": precision, "recall": recall, "f1": f1, "support": support})
        return rows

    def most_confused(self, k: int) -> list[tuple[int, int, int]]:
        pairs = Counter((int(t), int(p)) for t, p in zip(self.targets, self.pred) if t != p)
        return sorted(((t, p, n) for (t, p), n in pairs.items()), key=lambda r: (-r[2], r[0], r[1]))[:k]

    def near_bin_edge(self, n_bins: int) -> bool:
        position = self.conf * n_bins
        edge = np.round(position)
        return bool(np.any((np.abs(position - edge) < 1e-4) & (edge > 0) & (edge < n_bins)))

    def calibration_error(self, n_bins: int) -> float:
        bins = np.minimum(np.floor(self.conf * n_bins).astype(int), n_bins - 1)
        correct = (~self.wrong).astype(np.float64)
        return sum(abs(correct[bins == b].sum() - self.conf[bins == b].sum()) for b in range(n_bins)) / len(bins)

    def label_issues(self, margin: float) -> set[int]:
        """Confident learning: p(predicted) >= the mean self-confidence of the predicted class."""
        thresholds = np.array(
            [self.self_conf[self.targets == k].mean() if np.any(self.targets == k) else np.nan for k in range(self.c)]
        )
        with np.errstate(invalid="ignore"):
            hits = self.wrong & (self.conf >= thresholds[self.pred] + margin)
        return set(np.flatnonzero(hits).tolist())


@PROPERTY
@given(predictions())
def test_matches_numpy(case: tuple[np.ndarray, np.ndarray, list[int]]) -> None:
    logits, targets, bounds = case
    analyzer, ref = fill(FailureAnalyzer(logits.shape[1]), logits, targets, bounds), Reference(logits, targets)
    np.testing.assert_array_equal(analyzer.confusion_matrix().numpy(), ref.confusion())
    for got, want in zip(analyzer.per_class(), ref.per_class(), strict=True):
        assert got == pytest.approx(want, abs=1e-12)
    assert analyzer.most_confused(5) == ref.most_confused(5)
    assert analyzer.errors == int(ref.wrong.sum())
    assert analyzer.error_rate == pytest.approx(ref.wrong.mean())
    records = analyzer.failures
    assert [(f.index, f.true, f.predicted) for f in records] == [
        (int(i), int(targets[i]), int(ref.pred[i])) for i in np.flatnonzero(ref.wrong)
    ]
    wrong = ref.wrong
    np.testing.assert_allclose([f.confidence for f in records], ref.conf[wrong], rtol=1e-5)
    np.testing.assert_allclose([f.self_confidence for f in records], ref.self_conf[wrong], rtol=1e-5)
    issues = {f.index for f in analyzer.label_issues()}
    assert ref.label_issues(1e-6) <= issues <= ref.label_issues(-1e-6)


@PROPERTY
@given(predictions(), st.sampled_from([1, 2, 10, 15, 20, 100]))
def test_calibration_error_matches_numpy(case: tuple[np.ndarray, np.ndarray, list[int]], n_bins: int) -> None:
    logits, targets, bounds = case
    ref = Reference(logits, targets)
    assume(not ref.near_bin_edge(n_bins))
    analyzer = fill(FailureAnalyzer(logits.shape[1]), logits, targets, bounds)
    assert analyzer.calibration_error(n_bins) == pytest.approx(ref.calibration_error(n_bins), abs=1e-6)
    assert analyzer.reliability(n_bins)["count"].sum() == len(targets)


@PROPERTY
@given(predictions())
def test_log_probabilities_give_the_same_results_as_logits(case: tuple[np.ndarray, np.ndarray, list[int]]) -> None:
    logits, targets, bounds = case
    log_probs = torch.log_softmax(torch.from_numpy(logits), 1).numpy()
    a = fill(FailureAnalyzer(logits.shape[1]), logits, targets, bounds)
    b = fill(FailureAnalyzer(logits.shape[1]), log_probs, targets, bounds)
    assert torch.equal(a.confusion_matrix(), b.confusion_matrix())
    assert a.per_class() == b.per_class() and a.most_confused(100) == b.most_confused(100)
    assert [(f.index, f.true, f.predicted) for f in a.failures] == [(f.index, f.true, f.predicted) for f in b.failures]
    np.testing.assert_allclose([f.loss for f in a.failures], [f.loss for f in b.failures], rtol=1e-5, atol=1e-6)
    assert a.calibration_error() == pytest.approx(b.calibration_error(), abs=1e-6)


@PROPERTY
@given(predictions(max_classes=5, max_samples=120), st.integers(1, 6), st.integers(1, 40))
def test_kept_inputs_are_the_worst_failures_ties_included(
    case: tuple[np.ndarray, np.ndarray, list[int]], keep: int, spread: int
) -> None:
    """Duplicate indices and equal losses: the kept inputs are the first ``keep`` of all failures
    by (key desc, index asc, arrival), the order ``worst()`` reports."""
    logits, targets, bounds = case
    n = len(targets)
    indices = np.random.default_rng(spread).integers(0, spread, n)
    inputs = np.arange(n, dtype=np.float32)[:, None].repeat(3, 1)  # row i tells its arrival position
    analyzer = fill(
        FailureAnalyzer(logits.shape[1], keep=keep), logits, targets, bounds, inputs=inputs, indices=indices
    )
    with mock.patch.object(failures_module, "_reads_are_free", return_value=False):  # as off the CPU
        merged_always = fill(
            FailureAnalyzer(logits.shape[1], keep=keep), logits, targets, bounds, inputs=inputs, indices=indices
        )
    logp = torch.log_softmax(torch.from_numpy(logits), 1)
    top, pred = logp.max(1)
    wrong = np.flatnonzero(pred.numpy() != targets)
    keys = {"loss": -logp[torch.arange(n), torch.from_numpy(targets)].numpy(), "confidence": top.exp().numpy()}
    for by, key in keys.items():
        ranked = wrong[np.lexsort((wrong, indices[wrong], -key[wrong]))]
        worst = analyzer.worst(by)
        assert [f.index for f in worst] == indices[ranked].tolist()
        assert [int(f.input[0]) for f in worst[:keep]] == ranked[:keep].tolist()
        assert all(f.input is None for f in worst[keep:])
        assert [int(f.input[0]) for f in merged_always.worst(by)[:keep]] == ranked[:keep].tolist()


def test_no_cap_twenty_thousand_failures_are_all_recorded() -> None:
    analyzer = FailureAnalyzer(10)
    targets = torch.arange(20_000) % 10
    for batch in torch.arange(20_000).split(1000):
        analyzer.update(nn.functional.one_hot((targets[batch] + 1) % 10, 10).float(), targets[batch])
    assert analyzer.errors == 20_000 and analyzer.error_rate == 1.0
    assert [f.index for f in analyzer.failures] == list(range(20_000))


def test_collecting_in_chunks_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    logits, targets = rng.normal(size=(3000, 7)).astype(np.float32), rng.integers(0, 7, 3000)
    bounds = list(range(0, 3001, 100))
    whole = fill(FailureAnalyzer(7), logits, targets, bounds, inputs=logits)
    monkeypatch.setattr(failures_module, "COLLECT_EVERY", 250)
    chunked = fill(FailureAnalyzer(7), logits, targets, bounds, inputs=logits)
    assert chunked._pending_samples < 250  # it did collect along the way
    assert chunked.to_dict() == whole.to_dict()


def test_reset_forgets_batches_and_indices_restart() -> None:
    analyzer = FailureAnalyzer(3)
    analyzer.update(torch.eye(3)[[1, 2]], torch.tensor([0, 0]), inputs=torch.zeros(2, 4))
    analyzer.reset()
    assert analyzer.samples == 0 and analyzer.failures == [] and math.isnan(analyzer.error_rate)
    analyzer.update(torch.eye(3)[[1]], torch.tensor([0]))  # inputs may change after a reset
    assert [f.index for f in analyzer.failures] == [0]


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda a: a.update(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)),
            r"outputs must be a float tensor of shape \(batch, 5\), got a float32 tensor of shape \(4, 3\)",
        ),
        (lambda a: a.update(torch.zeros(4), torch.zeros(4, dtype=torch.long)), r"shape \(batch, 5\)"),
        (lambda a: a.update(torch.zeros(4, 5, dtype=torch.long), torch.zeros(4, dtype=torch.long)), "float tensor"),
        (
            lambda a: a.update(torch.zeros(4, 5), torch.zeros(3, dtype=torch.long)),
            r"targets must be an integer tensor of class indices of shape \(4,\)",
        ),
        (lambda a: a.update(torch.zeros(4, 5), torch.zeros(4, 5)), "one-hot or soft targets"),
        (
            lambda a: a.update(torch.zeros(4, 5), torch.tensor([0, 1, 5, 2])),
            r"targets must be class indices in \[0, 5\), got values from 0 to 5",
        ),
        (lambda a: a.update(torch.zeros(4, 5), torch.tensor([0, -1, 2, 2])), "got values from -1 to 2"),
        (
            lambda a: a.update(torch.tensor([[0.0] * 5, [math.nan] + [0.0] * 4]), torch.tensor([0, 1])),
            r"NaN \(or \+inf\) in 1 of 2 rows, first in row 1",
        ),
        (lambda a: a.update(torch.tensor([[math.inf] + [0.0] * 4]), torch.tensor([0])), "NaN"),
        (
            lambda a: a.update(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long), inputs=torch.zeros(3, 2)),
            "inputs must be a tensor with the batch size 4 first",
        ),
        (
            lambda a: a.update(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long), indices=[1, 2]),
            "indices must be 4 integers",
        ),
        (
            lambda a: a.update(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long), indices=torch.zeros(4)),
            "indices must be 4 integers",
        ),
        (lambda a: a.calibration_error(7), "n_bins must divide 3600"),
        (lambda a: a.worst("margin"), "by must be one of"),
        (lambda a: a.flips(), "flips need two closed epochs"),
    ],
)
def test_bad_input_is_a_clear_value_error(call, message: str) -> None:
    analyzer = FailureAnalyzer(5)
    with pytest.raises(ValueError, match=message):
        call(analyzer)
    assert analyzer.samples == 0  # a rejected batch leaves no trace


def test_constructor_and_consistency_checks() -> None:
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        FailureAnalyzer(1)
    with pytest.raises(ValueError, match="class_names has 2 names for 3 classes"):
        FailureAnalyzer(3, ["a", "b"])
    analyzer = FailureAnalyzer(3)
    with pytest.raises(ValueError, match="targets must be class indices"):
        analyzer.update(torch.zeros(2, 3), torch.tensor([0, 3]))  # a rejected first batch decides nothing
    analyzer.update(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), inputs=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="inputs were given with the earlier batches"):
        analyzer.update(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"earlier batches had float32 rows of shape \(4,\)"):
        analyzer.update(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), inputs=torch.zeros(2, 5))
    # an empty batch: a no-op
    analyzer.update(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), inputs=torch.zeros(0, 4))
    assert analyzer.samples == 2


def test_history_and_flips() -> None:
    """Epoch 1 fails {1, 2} of 0..9, epoch 2 fails {2, 3}, epoch 3 sees only 0..4 and fails {4}."""
    analyzer = FailureAnalyzer(2)

    def epoch(seen: range, failed: set[int]) -> None:
        targets = torch.tensor([int(i in failed) for i in seen])
        analyzer.update(torch.tensor([[1.0, 0.0]] * len(seen)), targets, indices=torch.tensor(list(seen)))
        analyzer.end_epoch()

    epoch(range(10), {1, 2})
    epoch(range(10), {2, 3})
    epoch(range(5), {4})
    assert [(r.epoch, r.samples, r.errors) for r in analyzer.history] == [(1, 10, 2), (2, 10, 2), (3, 5, 1)]
    assert analyzer.samples == 0  # end_epoch resets: rates are per epoch, never cumulative
    assert analyzer.flips(2).tolist() == [3] and analyzer.flips(2, to="right").tolist() == [1]
    assert analyzer.flips().tolist() == [4] and analyzer.flips(3, to="right").tolist() == [2, 3]
    assert analyzer.history[1].error_rate == 0.2
    assert "Right->wrong" in render_text(analyzer)


def test_hook_pairs_outputs_with_targets_in_either_order() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    x, y = torch.randn(3, 8, 1, 12), torch.randint(0, 4, (3, 8))
    hooked, direct = FailureAnalyzer(4, keep=2), FailureAnalyzer(4, keep=2)
    with hooked.attach(model, inputs=True) as hook:
        hook.targets(y[0])  # before the forward
        model(x[0])
        for i in (1, 2):
            model(x[i])
            hook.targets(y[i])  # after it
        with pytest.raises(ValueError, match="targets given twice"):
            hook.targets(y[0])
            hook.targets(y[0])
    assert not model._forward_hooks
    with torch.no_grad():
        for i in range(3):
            direct.update(model(x[i]), y[i], inputs=x[i])
    assert hooked.to_dict() == direct.to_dict()
    assert all(torch.equal(a.input, b.input) for a, b in zip(hooked.worst()[:2], direct.worst()[:2]))


def test_hook_refuses_a_second_forward_without_targets() -> None:
    model = nn.Linear(3, 2)
    with FailureAnalyzer(2).attach(model, select=lambda out: out) as hook, pytest.raises(ValueError, match="ran twice"):
        model(torch.zeros(1, 3))
        model(torch.zeros(1, 3))
    hook.remove()


def test_analyze_failures_over_a_loader_restores_training_flags() -> None:
    torch.manual_seed(0)
    model = Net().train()
    model.bn0.eval()
    x, y = torch.randn(70, 1, 28, 28), torch.randint(0, 10, (70,))
    result = analyze_failures(model, DataLoader(TensorDataset(x, y), batch_size=32), keep=4)
    assert model.training and not model.bn0.training and model.conv0.training
    manual = FailureAnalyzer(10, keep=4)
    with torch.no_grad():
        model.eval()
        manual.update(model(x), y, inputs=x)
    assert result.to_dict() == manual.to_dict()
    shifted_loader = DataLoader(TensorDataset(x, y, torch.arange(100, 170)), batch_size=32)
    shifted = analyze_failures(model, shifted_loader, inputs=False)
    assert [f.index - 100 for f in shifted.failures] == [f.index for f in manual.failures]
    assert all(f.input is None for f in shifted.worst())


def test_exports_are_json_safe_and_csv_has_every_failure(tmp_path) -> None:
    analyzer = FailureAnalyzer(3, ["cat", "dog", "eel"])
    log_probs = torch.tensor(
        [[0.0, -math.inf, -math.inf], [math.log(0.2), math.log(0.7), math.log(0.1)], [0.0, -1, -2]]
    )
    analyzer.update(log_probs, torch.tensor([1, 1, 2]))
    report = analyzer.to_dict()
    json.dumps(report, allow_nan=False)
    assert report["schema"] == "torchprobe.failures/1"
    assert report["failures"] == [
        {"index": 0, "true": 1, "predicted": 0, "confidence": 1.0, "loss": None},
        {"index": 2, "true": 2, "predicted": 0,
         "confidence": pytest.approx(0.665, abs=1e-3), "loss": pytest.approx(2.408, abs=1e-3)},
    ]
    assert report["most_confused"] == [
        {"true": "dog", "predicted": "cat", "count": 1}, {"true": "eel", "predicted": "cat", "count": 1}
    ]
    assert report["per_class"][1] == {
        "class": "dog", "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2
    }
    analyzer.to_csv(tmp_path / "failures.csv")
    rows = list(csv.DictReader(open(tmp_path / "failures.csv")))
    assert [(r["index"], r["true_name"], r["predicted_name"]) for r in rows] == [
        ("0", "dog", "cat"), ("2", "eel", "cat")
    ]
    assert float(rows[1]["self_confidence"]) == pytest.approx(math.exp(-float(rows[1]["loss"])))
    buffer = io.StringIO()
    FailureAnalyzer(2).to_csv(buffer)
    assert buffer.getvalue().strip() == "index,true,predicted,confidence,self_confidence,loss"


def test_rich_report() -> None:
    analyzer = FailureAnalyzer(3, ["cat", "dog", "eel"])
    analyzer.update(torch.tensor([[2.0, 0, 0], [2.0, 0, 0], [0, 0, 2.0]]), torch.tensor([0, 1, 2]))
    text = render_text(analyzer)
    assert "Failures: 1 of 3 samples (33.33% error)" in text
    for part in ("Per class", "Most confused", "Worst failures by loss", "Label-issue candidates: 1 (indices 1)"):
        assert part in text
    assert str(analyzer) == text and "samples=3" in repr(analyzer)
    assert "no samples since the last reset" in render_text(FailureAnalyzer(2))


def test_failure_record() -> None:
    failure = Failure(7, 1, 2, 0.9, math.log(4))
    assert failure.self_confidence == pytest.approx(0.25)
    assert failure == Failure(7, 1, 2, 0.9, math.log(4), torch.zeros(1))  # inputs do not take part in equality


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_update_never_waits_for_the_gpu() -> None:
    analyzer = FailureAnalyzer(10, keep=8)
    outputs = torch.randn(64, 10, device="cuda")
    targets = torch.randint(0, 10, (64,), device="cuda")
    inputs = torch.randn(64, 3, device="cuda")
    analyzer.update(outputs, targets, inputs, indices=torch.arange(64, device="cuda"))  # allocations
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            analyzer.update(outputs, targets, inputs, indices=torch.arange(64, device="cuda"))
            analyzer.update(outputs, targets, inputs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    analyzer.update(outputs, targets.clone().fill_(10), inputs)
    with pytest.raises(ValueError, match="targets >= num_classes"):
        analyzer.confusion_matrix()


# -- pictures ----------------------------------------------------------------------------------


@pytest.fixture
def digits() -> tuple[FailureAnalyzer, torch.Tensor]:
    """Normalised 1x8x8 'images' whose top-left pixel encodes the index, and a classifier's outputs."""
    torch.manual_seed(0)
    mean, std = 0.5, 0.25
    images = torch.rand(40, 1, 8, 8)
    images[:, 0, 0, 0] = torch.arange(40) / 40
    analyzer = FailureAnalyzer(10, [f"digit {i}" for i in range(10)], keep=6)
    analyzer.update(torch.randn(40, 10) * 3, torch.randint(0, 10, (40,)), inputs=(images - mean) / std)
    return analyzer, images


def test_pictures_render(digits, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from torchprobe import plots

    analyzer, _ = digits
    paths = plots.save_all(analyzer, tmp_path, mean=0.5, std=0.25, k=6)
    assert sorted(paths) == ["confusion", "gallery_confidence", "gallery_loss", "most_confused", "reliability"]
    for name, path in paths.items():
        pixels = imread(path)
        assert pixels.shape[0] >= 150 and pixels.shape[1] >= 150, name
        assert pixels[..., :3].std() > 0.05, name  # not blank
    assert imread(paths["confusion"]).shape[1] > 1.5 * imread(paths["confusion"]).shape[0]  # two panels
    assert imread(paths["reliability"]).shape[:2] == (650, 550)


def test_gallery_shows_de_normalised_inputs_with_captions(digits) -> None:
    pytest.importorskip("matplotlib")
    from torchprobe import plots

    analyzer, images = digits
    fig = plots.gallery(analyzer, "confidence", k=4, mean=[0.5], std=[0.25])
    axes = fig.axes
    assert len(axes) == 4
    for ax, failure in zip(axes, analyzer.worst("confidence", 4)):
        np.testing.assert_allclose(ax.images[0].get_array(), images[failure.index, 0].numpy(), atol=1e-6)
        assert ax.get_xlabel() == (f"digit {failure.true} -> digit {failure.predicted}\n"
                                   f"conf {failure.confidence:.2f}  #{failure.index}")
    with pytest.raises(ValueError, match="no inputs were kept"):
        plots.gallery(fill(FailureAnalyzer(2), np.float32([[1, 0]]), np.int64([1]), [0, 1]))
    with pytest.raises(ValueError, match="are not images"):
        wide = FailureAnalyzer(2)
        wide.update(torch.tensor([[1.0, 0]]), torch.tensor([1]), inputs=torch.zeros(1, 5, 4, 4))
        plots.gallery(wide)
    assert plots.gallery(FailureAnalyzer(2)).get_suptitle() == "No failures"
    assert len(plots.confusion(analyzer, normalize=True).axes) == 2  # the heatmap and its colour bar


def test_torchprobe_works_without_matplotlib(monkeypatch: pytest.MonkeyPatch, digits) -> None:
    code = (
        "import sys, torchprobe, torchprobe.failures, torchprobe.render.plots; "
        "assert 'matplotlib' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    from torchprobe import plots

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'torchprobe\[plots\]'"):
        plots.confusion(digits[0])


# -- argument validation, meta outputs, and reads that stay small at scale ---------------------------


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"num_classes": 0}, ValueError, r"^num_classes must be an integer >= 2, got 0$"),
        ({"num_classes": -3}, ValueError, r"^num_classes must be an integer >= 2, got -3$"),
        ({"num_classes": 2.5}, TypeError, r"^num_classes must be an integer >= 2, got 2\.5 \(a float\)$"),
        ({"num_classes": "10"}, TypeError, r"^num_classes must be an integer >= 2, got '10' \(a str\)$"),
        ({"num_classes": True}, TypeError, r"^num_classes must be an integer >= 2, got True \(a bool\)$"),
        ({"num_classes": 3, "keep": 2.5}, TypeError, r"^keep must be an integer >= 0, got 2\.5 \(a float\)$"),
        ({"num_classes": 3, "keep": -1}, ValueError, r"^keep must be an integer >= 0, got -1$"),
        ({"num_classes": 3, "keep": None}, TypeError, r"^keep must be an integer >= 0, got None \(a NoneType\)$"),
        ({"num_classes": 3, "class_names": "abc"}, TypeError,
         r"^class_names must be a sequence of 3 names, got 'abc' \(a str\)$"),
        ({"num_classes": 3, "class_names": 3}, TypeError,
         r"^class_names must be a sequence of 3 names, got 3 \(an int\)$"),
        ({"num_classes": 3, "class_names": ["a", "b"]}, ValueError, r"^class_names has 2 names for 3 classes$"),
    ],
)
def test_constructor_arguments_are_checked_at_once(kwargs, error, message: str) -> None:
    with pytest.raises(error, match=message):
        FailureAnalyzer(**kwargs)


def test_numpy_integers_are_accepted_as_sizes() -> None:
    analyzer = FailureAnalyzer(np.int64(3), keep=np.int32(2))
    assert type(analyzer.num_classes) is int and type(analyzer.keep) is int


@pytest.mark.parametrize("where", ["outputs", "targets", "inputs", "indices"])
def test_meta_tensors_are_refused_at_the_first_update(where: str) -> None:
    args = {"outputs": torch.zeros(4, 3), "targets": torch.zeros(4, dtype=torch.long),
            "inputs": torch.zeros(4, 2), "indices": torch.arange(4)}
    args[where] = args[where].to("meta")
    analyzer = FailureAnalyzer(3)
    with pytest.raises(ValueError, match=rf"^{where} are on the meta device \(shapes without values\): "
                                         "FailureAnalyzer needs real values"):
        analyzer.update(**args)
    assert analyzer.samples == 0 and analyzer.device is None  # nothing was added, nothing decided


def analyzer_with_failures(classes: int, n: int, seed: int = 0) -> FailureAnalyzer:
    g = torch.Generator().manual_seed(seed)
    analyzer = FailureAnalyzer(classes)
    analyzer.update(torch.randn(n, classes, generator=g), torch.randint(0, classes, (n,), generator=g))
    _ = analyzer.calibration_error()  # collect the records: what follows measures only the reads
    return analyzer


def traced_peak(read) -> int:
    """Bytes allocated at the peak of ``read()`` (numpy and Python objects; the result included)."""
    import tracemalloc

    tracemalloc.start()
    try:
        read()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reads_with_many_classes_do_not_copy_the_confusion_matrix() -> None:
    analyzer = analyzer_with_failures(1000, 300)
    counts = 8 * 1000**2  # the documented size of the confusion counts
    assert traced_peak(lambda: analyzer.errors) < 1000  # a running count: no copy of anything
    assert traced_peak(lambda: analyzer.error_rate) < 1000
    for read in (lambda: analyzer.per_class(), lambda: analyzer.most_confused(5), lambda: analyzer.label_issues(3),
                 lambda: analyzer.failures, lambda: analyzer.worst("loss", 3)):
        assert traced_peak(read) < counts / 10
    assert traced_peak(analyzer.confusion_matrix) < 1.2 * counts  # its result, once
    # the JSON report holds the matrix as lists (its result), made without a second copy of it
    assert traced_peak(lambda: analyzer.to_dict(failures=False)) < 1.6 * counts
    assert analyzer.errors == analyzer.samples - int(analyzer.confusion_matrix().trace())


def test_most_confused_in_blocks_matches_the_whole_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    analyzer = analyzer_with_failures(40, 3000)
    whole = analyzer.most_confused(1600)
    monkeypatch.setattr(metrics_module, "BLOCK", 100)  # two rows and a half per block
    assert analyzer.most_confused(1600) == whole
    assert analyzer.most_confused(7) == whole[:7]
    assert [n for *_, n in whole] == sorted((n for *_, n in whole), reverse=True)
    cm = analyzer.confusion_matrix().numpy()
    assert sum(n for *_, n in whole) == cm.sum() - np.trace(cm)


def count_failure_objects(monkeypatch: pytest.MonkeyPatch) -> Counter:
    made: Counter = Counter()
    original = Failure.__init__

    def counting(self, *args, **kwargs) -> None:
        made["failures"] += 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(Failure, "__init__", counting)
    return made


def test_report_and_export_scale_with_the_failures_not_with_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """str() summarises, and neither str() nor to_dict() makes a Failure object per failure, so both
    stay linear and small per failure (5 M samples in seconds: bench/failures_reads.py)."""
    small, large = analyzer_with_failures(10, 2000), analyzer_with_failures(10, 20_000)
    made = count_failure_objects(monkeypatch)
    texts = [str(small), str(large)]
    assert made["failures"] <= 2 * 20  # the rows shown, not the 18,000 failures
    assert len(texts[0].splitlines()) == len(texts[1].splitlines())  # the same summary, other numbers
    assert f"Label-issue candidates: {len(large.label_issues()):,}" in texts[1]
    report = large.to_dict()
    assert made["failures"] <= 2 * 20
    assert len(report["failures"]) == large.errors == len(large.failures)
    assert report["failures"][:3] == [f.to_dict() for f in large.failures[:3]]
    assert report["label_issues"] == [f.index for f in large.label_issues()]
    assert len(large.label_issues()) > 1000  # as many as there are, counted without objects


def test_failure_lists_read_like_lists() -> None:
    analyzer = analyzer_with_failures(5, 200)
    failures = analyzer.failures
    as_list = list(failures)
    assert len(failures) == len(as_list) == analyzer.errors
    assert failures == as_list and as_list == list(failures) and failures == analyzer.failures
    assert failures[0] == as_list[0] and failures[-1] == as_list[-1] and failures[2:5] == as_list[2:5]
    assert [f.index for f in failures] == sorted(f.index for f in failures)
    assert failures != as_list[:-1] and bool(failures) and not FailureAnalyzer(3).failures
    with pytest.raises(IndexError):
        failures[len(as_list)]
    worst = analyzer.worst("confidence", 4)
    assert len(worst) == 4 and worst == sorted(as_list, key=lambda f: (-f.confidence, f.index))[:4]
