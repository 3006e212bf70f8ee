"""The example notebooks run, on a tiny subset: ``examples/mnist_walkthrough.ipynb`` executed in-process.

No Jupyter here: the notebook's JSON is read, the values of its parameter cell (the first code
cell, tagged ``parameters``) are replaced with tiny ones, and every code cell is executed in one
namespace, the value of a cell's last expression kept as a notebook would display it. matplotlib
draws with Agg, and every file the notebook writes lands in the test's ``tmp_path``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import torchprobe
from mnist_demo.model import Net

NOTEBOOK = Path(__file__).parent.parent / "examples" / "mnist_walkthrough.ipynb"
# 1 epoch on 256 images (2 steps of 128), evaluated on 32: a few seconds, mostly start-up and drawing
TINY = {"SUBSET": 256, "EVAL_SUBSET": 32, "EPOCHS": 1, "DEVICE": "cpu", "SEED": 1, "RUN_FOLDER": "run"}


def load_notebook(path: Path) -> dict[str, Any]:
    notebook = json.loads(path.read_text())
    assert notebook["nbformat"] == 4
    return notebook


def source(cell: dict[str, Any]) -> str:
    text = cell["source"]
    return text if isinstance(text, str) else "".join(text)


def code_cells(notebook: dict[str, Any]) -> list[dict[str, Any]]:
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def parameter_names(cell: dict[str, Any]) -> set[str]:
    """The names the parameter cell assigns; it may hold nothing but plain assignments."""
    names = set()
    for statement in ast.parse(source(cell)).body:
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1, ast.dump(statement)
        target = statement.targets[0]
        assert isinstance(target, ast.Name), ast.dump(statement)
        names.add(target.id)
    return names


def run_cell(text: str, namespace: dict[str, Any], name: str) -> Any:
    """Execute ``text`` in ``namespace`` as IPython would: the value of a last expression is
    returned (to be displayed) unless the cell ends with ``;``; otherwise ``None``."""
    tree = ast.parse(text, filename=name)
    last = tree.body[-1] if tree.body else None
    if not isinstance(last, ast.Expr) or text.rstrip().endswith(";"):
        exec(compile(tree, name, "exec"), namespace)
        return None
    body = ast.Module(body=tree.body[:-1], type_ignores=[])
    exec(compile(body, name, "exec"), namespace)
    return eval(compile(ast.Expression(last.value), name, "eval"), namespace)


def execute(path: Path, parameters: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """Run the notebook's code cells with ``parameters`` replacing the parameter cell's values;
    the final namespace and what each cell displayed (its id, the value)."""
    cells = code_cells(load_notebook(path))
    first = cells[0]
    assert "parameters" in first["metadata"].get("tags", []), "the first code cell must be the parameter cell"
    unknown = set(parameters) - parameter_names(first)
    assert not unknown, f"the parameter cell no longer sets {sorted(unknown)}: the test would run the full notebook"
    for cell in cells:
        assert not cell["outputs"] and cell["execution_count"] is None, "save the notebook without outputs"
        assert not any(line.lstrip().startswith(("%", "!")) for line in source(cell).splitlines()), \
            "no IPython magics: the test executes the cells as plain Python"
    namespace: dict[str, Any] = {"__name__": "__main__"}
    displayed = []
    for i, cell in enumerate(cells):
        name = f"<{path.name} cell {cell.get('id', i)}>"
        value = run_cell(source(cell), namespace, name)
        if i == 0:
            namespace.update(parameters)
        if value is not None:
            displayed.append((cell.get("id", str(i)), value))
    return namespace, displayed


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[tuple[str, Any]], Path]:
    """The notebook, run once for the tests below, in a folder of its own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = tmp_path_factory.mktemp("walkthrough")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(folder)
        try:
            namespace, displayed = execute(NOTEBOOK, TINY)
        finally:
            plt.close("all")
    return namespace, displayed, folder


def test_the_parameter_cell_runs_the_full_recipe_by_default() -> None:
    """Saved with the values a reader runs, not the test's tiny ones."""
    namespace: dict[str, Any] = {}
    exec(source(code_cells(load_notebook(NOTEBOOK))[0]), namespace)
    assert namespace["SUBSET"] is None and namespace["EVAL_SUBSET"] is None and namespace["EPOCHS"] == 20


@pytest.mark.slow  # trains the network (one epoch on 256 images)
def test_the_rf_table_is_the_networks(walkthrough) -> None:
    namespace, displayed, _ = walkthrough
    rf = namespace["rf"]
    expected = torchprobe.receptive_field(Net(), (1, 28, 28))
    assert isinstance(rf, torchprobe.RFResult) and dict(displayed)["rf"] is rf
    assert rf.layers[-1].rf == expected.layers[-1].rf == expected.output.rf == (44, 44)
    assert rf.output.is_global == (True, True)
    assert [layer.name for layer in rf.layers] == [layer.name for layer in expected.layers]
    assert rf.layer("maxpool2").span((3, 3)) == ((6, 21), (6, 21))
    assert namespace["summary"].total_params == 19_344


@pytest.mark.slow  # trains the network (one epoch on 256 images)
def test_the_training_history_has_every_epoch(walkthrough) -> None:
    namespace, _, folder = walkthrough
    history, metrics = namespace["history"], namespace["metrics"]
    assert [h.epoch for h in history] == list(range(1, TINY["EPOCHS"] + 1))
    for h in history:
        assert all(math.isfinite(x) for x in (h.train_loss, h.val_loss, h.train_accuracy, h.val_accuracy))
        assert 0 <= h.val_errors <= TINY["EVAL_SUBSET"]
    assert metrics["train_images"] == TINY["SUBSET"] and math.isfinite(metrics["test"]["loss"])
    curves = namespace["curves_figure"]
    assert [len(line.get_xdata()) for ax in curves.axes for line in ax.get_lines()] == [TINY["EPOCHS"]] * 4
    run = folder / TINY["RUN_FOLDER"]
    assert {"model.pt", "metrics.json", "report.md", "confusion.png"} <= {p.name for p in run.iterdir()}


@pytest.mark.slow  # trains the network (one epoch on 256 images)
def test_the_gallery_shows_every_mistake_and_the_confusion_counts_every_sample(walkthrough) -> None:
    namespace, _, folder = walkthrough
    analyzer = namespace["analyzer"]
    assert analyzer.samples == TINY["EVAL_SUBSET"]
    cm = analyzer.confusion_matrix()
    assert int(cm.sum()) == analyzer.samples
    assert int(cm.sum() - cm.trace()) == analyzer.errors == len(analyzer.failures)
    assert analyzer.errors == namespace["metrics"]["val_failures"]["errors"]  # the run's own final pass
    assert cm.sum(1).tolist() == torch.bincount(namespace["val"].labels, minlength=10).tolist()
    assert analyzer.errors > 0  # one epoch on 256 images: a gallery to draw

    gallery = namespace["gallery"]
    images = [ax for ax in gallery.axes if ax.get_images()]
    assert len(images) == analyzer.errors
    labels = [ax.get_xlabel() for ax in images]
    assert labels[0].endswith(f"#{analyzer.worst('loss', 1)[0].index}")  # worst first
    assert sorted(int(label.rsplit("#", 1)[1]) for label in labels) == [f.index for f in analyzer.failures]

    confusion = namespace["confusion"]
    counts = confusion.axes[0].get_images()[0].get_array()
    assert counts.tolist() == cm.tolist()
    for name, figure in (("gallery", gallery), ("confusion", confusion), ("curves", namespace["curves_figure"])):
        figure.savefig(folder / f"{name}.png", dpi=40)
        assert (folder / f"{name}.png").stat().st_size > 500


@pytest.mark.slow  # trains the network (one epoch on 256 images)
def test_every_displayed_result_renders_in_a_notebook(walkthrough) -> None:
    namespace, displayed, _ = walkthrough
    shown = dict(displayed)
    assert {"rf", "summary", "failures", "gallery", "confusion"} <= set(shown)
    if importlib.util.find_spec("IPython") is None:
        pytest.skip("IPython is not installed")
    from IPython.core.formatters import DisplayFormatter

    formatter = DisplayFormatter()
    for cell, value in displayed:
        data, _ = formatter.format(value)
        assert data.get("text/plain"), cell
        if isinstance(value, torchprobe.display.Displayable):
            html = data.get("text/html")
            assert html and "<" in html and len(html) > 200, cell
            assert "Traceback" not in html and "Traceback" not in data["text/plain"], cell
    assert "44×44" in formatter.format(shown["rf"])[0]["text/plain"]
