"""``torchprobe trace`` and ``torchprobe summary`` as a user runs them (in-process, ``run_cli``)."""

from __future__ import annotations

import json

from tests.helpers.cli import assert_error, assert_ok, run_cli, table_names

LENET = "tests/helpers/zoo.py:LeNet"


def test_trace_lists_every_call() -> None:
    proc = run_cli("trace", "mnist_demo.model:Net", "--input", "1,28,28")
    assert_ok(proc)
    names = table_names(proc.stdout)
    assert names[0] == "(model)" and "conv0" in names and "gap" in names


def test_trace_failure_prints_the_partial_table_and_the_diagnosis() -> None:
    proc = run_cli("trace", LENET, "--input", "1,32,32")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "conv2" in table_names(proc.stdout)
    assert "expected: in_features=320" in proc.stdout and "received: [1, 500]: 500 features" in proc.stdout
    [line] = proc.stderr.splitlines()
    assert line.startswith("error: fc1 (Linear)") and "nn.Linear(500, 50)" in line


def test_trace_of_a_too_small_input_names_the_smallest_size() -> None:
    proc = run_cli("trace", "mnist_demo.model:Net", "--input", "1,12,12")
    assert proc.returncode == 1
    assert "at least 20x20" in proc.stdout and "conv5" in proc.stderr


def test_trace_json_carries_the_failure() -> None:
    proc = run_cli("trace", LENET, "--input", "1,32,32", "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["schema"] == "torchprobe.trace/1"
    assert report["failure"]["kind"] == "linear_in_features" and report["failure"]["module"] == "fc1"
    assert [c["status"] for c in report["calls"]][-1] == "failed"


def test_trace_ops_shows_functional_rows() -> None:
    proc = run_cli("trace", LENET, "--input", "1,28,28", "--ops")
    assert_ok(proc)
    assert table_names(proc.stdout).count("max_pool2d") == 2


def test_summary_table_and_totals() -> None:
    proc = run_cli("summary", "mnist_demo.model:Net", "--input", "1,28,28")
    assert_ok(proc)
    assert "Parameters: 19,344 (trainable 19,344, frozen 0)" in proc.stdout
    assert "global" in proc.stdout


def test_summary_json() -> None:
    proc = run_cli("summary", "mnist_demo.model:Net", "--input", "1,28,28", "--json")
    assert_ok(proc)
    report = json.loads(proc.stdout)
    assert report["schema"] == "torchprobe.summary/1"
    assert report["total_params"] == 19_344 == sum(layer["params"] for layer in report["layers"])
    assert report["rf"]["global"] == [True, True]


def test_summary_rf_steps_and_depth() -> None:
    proc = run_cli("summary", "mnist_demo.model:Net", "--input", "1,28,28", "--depth", "0", "--rf-steps")
    assert_ok(proc)
    assert table_names(proc.stdout)[0] == "(model)"
    assert "conv1 (Conv2d): rf 5 = 3 + (3-1)×1" in proc.stdout


def test_summary_bad_input_exits_2() -> None:
    assert_error(run_cli("summary", "mnist_demo.model:Net", "--input", "1,8,8"), 2, "at least 20x20")
    assert_error(run_cli("summary", "mnist_demo.model:Nope", "--input", "1,28,28"), 2, "Nope")


def test_summary_of_an_embedding_model_from_the_command_line() -> None:
    """Integer inputs from the CLI (before, every input was a float and an Embedding failed)."""
    proc = run_cli("summary", "tests/helpers/zoo.py:TokenClassifier", "--input", "12", "--dtype", "long:100", "--json")
    assert_ok(proc)
    report = json.loads(proc.stdout)
    assert report["layers"][-1]["output"]["shape"] == [1, 4] and report["total_params"] == 1668


def test_summary_columns_mode_and_depth() -> None:
    proc = run_cli("summary", "mnist_demo.model:Net", "--input", "1,28,28", "--mode", "train", "--depth", "0",
                   "--columns", "params,macs,saved")
    assert_ok(proc)
    header = next(line for line in proc.stdout.splitlines() if "Layer" in line)
    assert [h.strip() for h in header.strip("┃ ").split("┃")] == ["Layer", "Params", "MACs", "Saved for bwd"]
    assert table_names(proc.stdout) == ["(model)", "Total"]
    assert "saved for backward" in proc.stdout


def test_summary_without_an_input_lists_parameters() -> None:
    proc = run_cli("summary", "mnist_demo.model:Net")
    assert_ok(proc)
    assert "parameters only" in proc.stdout and "19,344" in proc.stdout


def test_bad_dtype_mode_and_columns_are_usage_errors() -> None:
    for option, value, needle in [("--dtype", "floaty", "bad dtype 'floaty'"), ("--mode", "training", "bad mode"),
                                  ("--columns", "params,flop", "unknown column 'flop'")]:
        proc = run_cli("summary", "mnist_demo.model:Net", "--input", "1,28,28", option, value)
        assert_error(proc, 2, needle)


def test_summary_of_a_failing_model_gives_the_diagnosis() -> None:
    proc = run_cli("summary", LENET, "--input", "1,32,32")
    line = assert_error(proc, 1, "fc1 (Linear)")
    assert "nn.Linear(500, 50)" in line
