"""The ``torchprobe`` command as a user runs it, called in-process by ``run_cli`` (tests/helpers/cli.py).

Exit codes: 0 ok; 2 bad usage or input (exactly one ``error:`` line on stderr, naming the cause,
nothing on stdout, no traceback); 1 the model fails on a valid input, or ``--strict`` met an op
without a receptive-field rule. ``--debug`` shows the traceback; ``--json`` prints only JSON.

The tests marked "a real process" start one, where the process boundary is the point: the installed
script and ``python -m torchprobe.cli`` run, and a parent sees the exit codes, the one error line and
the ``--debug`` traceback on the real stderr; ``test_in_process_runs_match_a_process`` checks that
``run_cli`` gives what a process gives.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import (
    CONSOLE_SCRIPT,
    assert_error,
    assert_no_traceback,
    assert_ok,
    run_cli,
    run_process,
    table_names,
    write_models,
)


@pytest.fixture
def models(tmp_path: Path) -> str:
    """Path of a file holding the test models (``MODELS``); a spec is ``f"{models}:Name"``."""
    return write_models(tmp_path)


# -- success ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("console_script", [False, True], ids=["python-m", "console-script"])
def test_seed_net_table(console_script: bool) -> None:
    """A real process: the installed script and ``python -m torchprobe.cli`` run, exit 0, print the table."""
    if console_script and not CONSOLE_SCRIPT.exists():
        pytest.skip(f"no console script at {CONSOLE_SCRIPT}")
    proc = run_process("rf", "mnist_demo.model:Net", "--input", "1,28,28", console_script=console_script)
    assert_ok(proc)
    names = table_names(proc.stdout)
    assert names[0] == "(model)"
    for layer in ("conv0", "maxpool1", "conv4", "maxpool3", "conv1x1_reduce_1", "gap"):
        assert layer in names
    assert "global" in proc.stdout


def test_console_script_reports_errors_like_python_m() -> None:
    """A real process: exit 2, one ``error:`` line on its stderr, no traceback."""
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"no console script at {CONSOLE_SCRIPT}")
    proc = run_process("rf", "mnist_demo.model:Net", "--input", "1,8,8", console_script=True)
    assert_error(proc, 2, "at least 20x20")


@pytest.mark.parametrize(
    "args",
    [["summary", "mnist_demo.model:Net", "--input", "1,28,28"], ["rf", "mnist_demo.model:Net"]],
    ids=["table", "usage-error"],
)
def test_in_process_runs_match_a_process(args: list[str]) -> None:
    """A real process, to check ``run_cli``: the same exit code, stdout (a table into a pipe) and stderr."""
    proc = run_process(*args)
    result = run_cli(*args)
    assert (result.returncode, result.stdout, result.stderr) == (proc.returncode, proc.stdout, proc.stderr)


def test_in_process_runs_do_not_share_user_files(tmp_path: Path) -> None:
    """Two model files of one name, each importing a sibling of one name: each run sees its own."""
    argv, path, cwd = list(sys.argv), list(sys.path), os.getcwd()
    for width in (3, 5):
        directory = tmp_path / f"v{width}"
        directory.mkdir()
        (directory / "layers.py").write_text(f"WIDTH = {width}\n")
        (directory / "cli_models.py").write_text(
            "from torch import nn\nfrom layers import WIDTH\n\n\n"
            "class Net(nn.Sequential):\n    def __init__(self):\n        super().__init__(nn.Conv2d(1, WIDTH, 3))\n"
        )
        proc = run_cli("rf", f"{directory}/cli_models.py:Net", "--input", "1,8,8", "--json")
        assert_ok(proc)
        assert json.loads(proc.stdout)["layers"][0]["output_shape"] == [1, width, 6, 6]
    assert (sys.argv, sys.path, os.getcwd()) == (argv, path, cwd)
    assert "layers" not in sys.modules


@pytest.mark.parametrize("name", ["factory", "instance"])
def test_factory_and_instance_specs(models: str, name: str) -> None:
    proc = run_cli("rf", f"{models}:{name}", "--input", "1,8,8")
    assert_ok(proc)
    assert "conv" in table_names(proc.stdout)


# -- bad specs -------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "no_such_model.py"
    assert_error(run_cli("rf", f"{missing}:Net", "--input", "1,28,28"), 2, "no such file", "no_such_model.py")


def test_missing_module() -> None:
    assert_error(run_cli("rf", "no_such_pkg_zz.models:Net", "--input", "1,28,28"), 2, "no module", "no_such_pkg_zz")


def test_missing_attribute_in_module() -> None:
    line = assert_error(run_cli("rf", "mnist_demo.model:Nett", "--input", "1,28,28"), 2, "Nett")
    assert "Net" in line.replace("Nett", "")  # points at what is there


def test_missing_attribute_in_file(models: str) -> None:
    line = assert_error(run_cli("rf", f"{models}:OneConvv", "--input", "1,28,28"), 2, "OneConvv")
    assert "OneConv" in line.replace("OneConvv", "")


def test_missing_attribute_in_torchvision() -> None:
    assert_error(run_cli("rf", "torchvision.models:resnet181", "--input", "3,32,32"), 2, "resnet181")


@pytest.mark.parametrize("spec", ["mnist_demo.model", ":Net"])
def test_malformed_spec(spec: str) -> None:
    assert_error(run_cli("rf", spec, "--input", "1,28,28"), 2, "spec")


@pytest.mark.parametrize(
    ("source", "cause"),
    [
        ('import torch\nraise RuntimeError("kaput at import")\n', "kaput at import"),
        ("def broken(:\n    pass\n", "SyntaxError"),
        ("import torch\nimport no_such_dependency_zz\n", "no_such_dependency_zz"),
    ],
    ids=["raises", "syntax-error", "missing-dependency"],
)
def test_file_that_fails_to_import(tmp_path: Path, source: str, cause: str) -> None:
    path = tmp_path / "broken_model.py"
    path.write_text(source)
    assert_error(run_cli("rf", f"{path}:Net", "--input", "1,28,28"), 2, "broken_model.py", cause)


def test_constructor_arguments(models: str) -> None:
    assert_error(run_cli("rf", f"{models}:NeedsN", "--input", "1,8,8"), 2, "NeedsN", "'n'")
    proc = run_cli("rf", f"{models}:NeedsN", "--input", "1,8,8", "--kwargs", '{"n": 3}', "--json")
    assert_ok(proc)
    assert json.loads(proc.stdout)["layers"][0]["output_shape"] == [1, 3, 6, 6]


def test_unexpected_constructor_argument(models: str) -> None:
    proc = run_cli("rf", f"{models}:OneConv", "--input", "1,8,8", "--kwargs", '{"depth": 3}')
    assert_error(proc, 2, "depth")


def test_constructor_that_raises(models: str) -> None:
    assert_error(run_cli("rf", f"{models}:CtorRaises", "--input", "1,8,8"), 2, "CtorRaises", "no weights here")


@pytest.mark.parametrize(
    ("name", "what"),
    [("returns_int", "int"), ("plain_object", "object"), ("Plain", "Plain")],
)
def test_not_a_module(models: str, name: str, what: str) -> None:
    assert_error(run_cli("rf", f"{models}:{name}", "--input", "1,8,8"), 2, name, what, "nn.Module")


# -- bad options -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["a,b,c", "1,28,0", "", "-1,28,28", "1.5,28,28"])
def test_malformed_input(text: str) -> None:
    line = assert_error(run_cli("rf", "mnist_demo.model:Net", "--input", text), 2, "--input")
    assert repr(text) in line or text in line


@pytest.mark.parametrize("text", ["{bad", "{'n': 3}", "[1, 2]", "null"])
def test_malformed_kwargs(text: str) -> None:
    assert_error(run_cli("rf", "mnist_demo.model:Net", "--input", "1,28,28", "--kwargs", text), 2, "--kwargs")


def test_missing_input_option() -> None:
    assert_error(run_cli("rf", "mnist_demo.model:Net"), 2, "--input")


def test_missing_spec() -> None:
    assert_error(run_cli("rf"), 2, "spec")


def test_unknown_option() -> None:
    assert_error(run_cli("rf", "mnist_demo.model:Net", "--input", "1,28,28", "--bogus"), 2, "--bogus")


def test_negative_depth() -> None:
    assert_error(run_cli("rf", "mnist_demo.model:Net", "--input", "1,28,28", "--depth", "-1"), 2, "--depth")


def test_unknown_device() -> None:
    assert_error(run_cli("rf", "mnist_demo.model:Net", "--input", "1,28,28", "--device", "tpu"), 2, "--device")


def test_no_arguments_prints_no_empty_error_line() -> None:
    proc = run_cli()
    assert_no_traceback(proc)
    assert "Usage" in proc.stdout + proc.stderr
    assert all(line.strip() != "error:" for line in proc.stderr.splitlines()), proc.stderr


# -- inputs the model cannot take (exit 2) and a model that fails (exit 1) ----------------------------


def test_input_too_small() -> None:
    assert_error(run_cli("rf", "mnist_demo.model:Net", "--input", "1,8,8"), 2, "at least 20x20", "conv4")


def test_wrong_channels() -> None:
    assert_error(run_cli("rf", "mnist_demo.model:Net", "--input", "3,28,28"), 2, "conv0", "channel")


@pytest.mark.parametrize(
    ("spec", "size"),
    [
        ("{models}:OneConv", "1,28"),
        ("{models}:OneConv", "1,28,28,28"),
        ("mnist_demo.model:Net", "1,28,28,28"),
        ("mnist_demo.model:Net", "1,28"),
    ],
    ids=["conv-rank3", "conv-rank5", "net-rank5", "net-rank3"],
)
def test_wrong_rank(models: str, spec: str, size: str) -> None:
    proc = run_cli("rf", spec.format(models=models), "--input", size)
    assert_error(proc, 2, "input")


def test_too_few_inputs(models: str) -> None:
    assert_error(run_cli("rf", f"{models}:TwoInputs", "--input", "3,16,16"), 2, "y")


@pytest.mark.parametrize(
    ("name", "where", "as_json"),
    [("Boom", "Boom", False), ("InnerBoom", "exploder", False), ("Boom", "Boom", True)],
    ids=["in-root", "in-submodule", "json"],
)
def test_forward_raises_on_a_valid_input(models: str, name: str, where: str, as_json: bool) -> None:
    args = ["rf", f"{models}:{name}", "--input", "1,28,28"] + (["--json"] if as_json else [])
    assert_error(run_cli(*args), 1, "boom", "ValueError", where)


# -- --debug ---------------------------------------------------------------------------------------


def test_debug_shows_the_traceback(models: str) -> None:
    """A real process: exit 1, the traceback on its stderr."""
    proc = run_process("rf", f"{models}:Boom", "--input", "1,28,28", "--debug")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr
    assert "ValueError: boom" in proc.stderr
    assert "raise ValueError" in proc.stderr  # the user's own line


def test_debug_shows_the_traceback_of_a_usage_error() -> None:
    proc = run_cli("rf", "mnist_demo.model:Net", "--input", "1,8,8", "--debug")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "too small" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [["mnist_demo.model:Net", "--input", "1,8,8"], ["mnist_demo.model:Nett", "--input", "1,28,28"]],
    ids=["too-small", "missing-attribute"],
)
def test_debug_keeps_the_exit_code(args: list[str]) -> None:
    # without --debug these exit 2 (test_input_too_small, test_missing_attribute_in_module)
    assert run_cli("rf", *args, "--debug").returncode == 2


# -- --json ----------------------------------------------------------------------------------------

LAYER_KEYS = {"name", "type", "call", "output_shape", "rf", "jump", "start", "global", "aligned", "uniform"}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_json_is_the_only_output_and_follows_the_schema() -> None:
    proc = run_cli("rf", "mnist_demo.model:Net", "--input", "1,28,28", "--json")
    assert_ok(proc)
    report = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert proc.stdout.strip().startswith("{") and proc.stdout.strip().endswith("}")
    assert report["schema"] == "torchprobe.rf/2"
    assert report["input_shape"] == [1, 28, 28]
    layers = report["layers"]
    assert layers
    for layer in layers:
        assert LAYER_KEYS <= layer.keys(), LAYER_KEYS - layer.keys()
        assert isinstance(layer["name"], str) and isinstance(layer["type"], str)
        assert isinstance(layer["call"], int) and not isinstance(layer["call"], bool)
        assert all(isinstance(n, int) for n in layer["output_shape"])
        for key in ("rf", "jump", "start"):
            assert len(layer[key]) == 2, (layer["name"], key)
            assert all(_is_number(v) for v in layer[key]), (layer["name"], key, layer[key])
        assert len(layer["global"]) == 2 and all(isinstance(g, bool) for g in layer["global"])
        assert isinstance(layer["aligned"], bool) and isinstance(layer["uniform"], bool)
    by_name = {layer["name"]: layer for layer in layers if layer["call"] == 0}
    assert by_name["conv0"]["rf"] == [3, 3] and by_name["conv0"]["jump"] == [1, 1]
    assert by_name["maxpool2"]["rf"] == [16, 16] and by_name["maxpool2"]["jump"] == [4, 4]
    root = by_name[""]
    assert root["type"] == "Net" and root["output_shape"] == [1, 10]
    assert root["rf"] == [44, 44] and root["global"] == [True, True]


# -- --depth ---------------------------------------------------------------------------------------


def test_depth_zero_shows_only_the_root() -> None:
    proc = run_cli("rf", "mnist_demo.model:Net", "--input", "1,28,28", "--depth", "0")
    assert_ok(proc)
    assert table_names(proc.stdout) == ["(model)"]


def test_depth_limits_nesting(models: str) -> None:
    spec = f"{models}:Nested"
    rows = {d: table_names(run_cli("rf", spec, "--input", "1,8,8", "--depth", str(d)).stdout) for d in (0, 1, 2)}
    assert rows[0] == ["(model)"]
    assert rows[1] == ["(model)", "block", "head"]
    assert rows[2] == ["(model)", "block", "block.conv", "block.act", "head"]


# -- ops without a rule: unknown, or an error with --strict ---------------------------------------------


@pytest.mark.parametrize(("name", "op"), [("Cdist", "cdist"), ("Topk", "topk"), ("SortRows", "sort")])
def test_op_without_rule_is_unknown(models: str, name: str, op: str) -> None:
    proc = run_cli("rf", f"{models}:{name}", "--input", "1,28,28")
    assert_ok(proc)
    assert "unknown" in proc.stdout
    flat = " ".join(proc.stdout.split())
    assert op in flat and "register_rf_rule" in flat

    proc = run_cli("rf", f"{models}:{name}", "--input", "1,28,28", "--json")
    assert_ok(proc)
    report = json.loads(proc.stdout)
    root = report["layers"][0]
    assert root["name"] == "" and root["unknown"] and op in root["unknown"]
    assert root["rf"] == [None, None]
    conv = next(layer for layer in report["layers"] if layer["name"] == "conv")
    assert conv["rf"] == [3, 3]  # known up to the op
    assert any(op in d["message"] and "register_rf_rule" in d["message"] for d in report["diagnostics"])
    assert {d["code"] for d in report["diagnostics"] if op in d["op"]} == {"no_rule"}


@pytest.mark.parametrize(
    ("name", "op", "as_json"),
    [("Cdist", "cdist", False), ("Topk", "topk", False), ("SortRows", "sort", False), ("Cdist", "cdist", True)],
    ids=["cdist", "topk", "sort", "cdist-json"],
)
def test_strict_fails_on_op_without_rule(models: str, name: str, op: str, as_json: bool) -> None:
    args = ["rf", f"{models}:{name}", "--input", "1,28,28", "--strict"] + (["--json"] if as_json else [])
    assert_error(run_cli(*args), 1, op, "register_rf_rule")


def test_strict_passes_when_every_op_has_a_rule() -> None:
    assert_ok(run_cli("rf", "mnist_demo.model:Net", "--input", "1,28,28", "--strict"))


# -- several inputs, torchvision, a huge input ----------------------------------------------------------


def test_two_inputs(models: str) -> None:
    spec = f"{models}:TwoInputs"
    proc = run_cli("rf", spec, "--input", "3,16,16", "--input", "1,16,16", "--json")
    assert_ok(proc)
    report = json.loads(proc.stdout)
    assert report["input_shape"] == [3, 16, 16]
    assert report["layers"][0]["rf"] == [3, 3]

    proc = run_cli("rf", spec, "-i", "3,16,16", "-i", "1,16,16", "--rf-input", "1", "--json")
    assert_ok(proc)
    report = json.loads(proc.stdout)
    assert report["input_shape"] == [1, 16, 16]
    assert report["layers"][0]["rf"] == [5, 5]


def test_rf_input_out_of_range(models: str) -> None:
    proc = run_cli("rf", f"{models}:TwoInputs", "-i", "3,16,16", "-i", "1,16,16", "--rf-input", "2")
    assert_error(proc, 2, "input 2")


def test_torchvision_resnet18_with_kwargs() -> None:
    proc = run_cli(
        "rf", "torchvision.models:resnet18", "--input", "3,224,224", "--kwargs", '{"num_classes": 10}', "--json"
    )
    assert_ok(proc)
    report = json.loads(proc.stdout)
    root = report["layers"][0]
    assert root["type"] == "ResNet"
    assert root["output_shape"] == [1, 10]
    assert root["global"] == [True, True]
    assert any(layer["name"] == "layer4.1.conv2" for layer in report["layers"])


def test_huge_input_completes() -> None:
    proc = run_cli("rf", "mnist_demo.model:Net", "--input", "1,20000,20000", "--json")
    assert_ok(proc)
    report = json.loads(proc.stdout)
    assert report["input_shape"] == [1, 20000, 20000]
    assert report["device"] == "meta"
    assert report["layers"][0]["output_shape"] == [1, 10]
