"""Tests of sda/simulation.py and the `sda simulate` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sda import __version__
from sda.cli import build_parser, main
from sda.errors import ParameterError, ReconstructionError
from sda.protocol.params import check_thresholds
from sda.simulation import SimulationConfig, default_thresholds, run


def small(**over) -> SimulationConfig:
    kw = dict(participants=30, clerks=10, dimension=6, seed=0)
    kw.update(over)
    return SimulationConfig(**kw)


def assert_exact(report) -> None:
    assert report.exact
    np.testing.assert_array_equal(report.revealed.field_sum, report.true_field_sum)
    # Fixed-point rounding: each participant is off by less than one unit per coordinate.
    scale = report.config.scale
    bound = report.config.participants / scale
    assert np.abs(report.revealed.values - report.true_sum).max() <= bound
    np.testing.assert_array_equal(report.revealed.values, report.true_field_sum / scale)


# --- thresholds ----------------------------------------------------------------------------


def test_default_thresholds_match_the_sda_paper_medium_set():
    assert default_thresholds(80) == (47, 16)
    assert default_thresholds(10) == (5, 2)


@pytest.mark.parametrize("n", range(3, 201))
def test_default_thresholds_are_split_set_safe(n):
    k, t = default_thresholds(n)
    check_thresholds(k, t, n)
    assert t >= 1 and k >= 1


@pytest.mark.parametrize("n", [0, 1, 2])
def test_default_thresholds_need_three_clerks(n):
    with pytest.raises(ParameterError):
        default_thresholds(n)


# --- run -----------------------------------------------------------------------------------


def test_simulation_reveals_the_exact_sum_with_negative_values():
    report = run(small(), show_progress=False)
    assert_exact(report)
    assert (report.true_field_sum < 0).any() and (report.true_field_sum > 0).any()
    assert report.revealed.participants == 30
    assert (report.k, report.t) == (5, 2)
    assert report.revealed.clerks_used == tuple(f"clerk-{j}" for j in range(10))
    assert report.revealed.wrong_clerks == ()
    assert set(report.seconds) == {"setup", "participate", "snapshot", "clerks", "reveal"}
    B = -(-6 // 5)
    assert report.upload_bytes_per_participant >= 10 * B * 4
    assert report.clerk_download_bytes < 30 * B * 4 + 300


def test_simulation_is_reproducible_in_its_inputs():
    a = run(small(seed=7), show_progress=False)
    b = run(small(seed=7), show_progress=False)
    c = run(small(seed=8), show_progress=False)
    np.testing.assert_array_equal(a.true_field_sum, b.true_field_sum)
    np.testing.assert_array_equal(a.revealed.field_sum, b.revealed.field_sum)
    assert not np.array_equal(a.true_field_sum, c.true_field_sum)


@settings(deadline=None, max_examples=5)
@given(seed=st.integers(0, 2**32 - 1), participants=st.integers(1, 25),
       dimension=st.integers(1, 12), clip=st.sampled_from([0.5, 1.0, 3.0]))
def test_simulation_is_exact_for_any_seed_and_size(seed, participants, dimension, clip):
    report = run(small(seed=seed, participants=participants, dimension=dimension, clip=clip),
                 show_progress=False)
    assert_exact(report)
    assert np.abs(report.true_field_sum).max() <= participants * (clip * report.config.scale + 1)


def test_simulation_with_explicit_k_and_t():
    report = run(small(clerks=13, k=6, t=2), show_progress=False)
    assert (report.k, report.t) == (6, 2)
    assert_exact(report)


def test_simulation_with_dropped_clerks():
    report = run(small(dropped_clerks=3), show_progress=False)  # r = 7 of 10 answer
    assert_exact(report)
    assert report.revealed.clerks_used == tuple(f"clerk-{j}" for j in range(7))


def test_simulation_with_too_many_dropped_clerks():
    with pytest.raises(ReconstructionError):
        run(small(dropped_clerks=4), show_progress=False)


def test_simulation_with_a_wrong_clerk_names_it():
    report = run(small(wrong_clerks=1), show_progress=False)
    assert_exact(report)
    assert report.revealed.wrong_clerks == ("clerk-0",)


def test_simulation_with_two_wrong_clerks_on_a_larger_committee():
    report = run(small(clerks=13, k=6, t=2, wrong_clerks=2), show_progress=False)
    assert_exact(report)
    assert sorted(report.revealed.wrong_clerks) == ["clerk-0", "clerk-1"]


@pytest.mark.parametrize("cfg", [
    dict(wrong_clerks=2),  # safe radius with 10 of 10 results is 1
    dict(wrong_clerks=1, dropped_clerks=2),  # 8 results: no redundancy left to correct
    dict(wrong_clerks=2, max_errors=5),  # capped at floor((10 - 7) / 2) = 1
])
def test_simulation_with_too_many_wrong_clerks_raises(cfg):
    with pytest.raises(ReconstructionError):
        run(small(**cfg), show_progress=False)


def test_simulation_progress_goes_to_stderr(capsys):
    run(small(participants=5), show_progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "participants" in err and "clerk jobs" in err


# --- the command line ----------------------------------------------------------------------

ARGS = ["simulate", "--participants", "30", "--clerks", "10", "--dimension", "5"]


def test_cli_json(capsys):
    assert main([*ARGS, "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["exact_field_sum"] is True
    assert summary["participants"] == 30 and summary["clerks"] == 10
    assert summary["clerks_answered"] == 10 and summary["dimension"] == 5
    assert (summary["k"], summary["t"]) == (5, 2)
    assert summary["wrong_clerks_named"] == []
    assert summary["max_abs_error"] <= 30 / 2**16
    assert err == ""  # --json implies no progress bar


def test_cli_json_names_wrong_clerks_and_counts_dropped(capsys):
    # n = 13, k = 6, t = 2: r = 8, and 12 answers leave a safe radius of min(2, 12-8-2) = 2
    assert main([*ARGS, "--json", "--wrong-clerks", "1", "--dropped-clerks", "1",
                 "--clerks", "13", "--packing", "6", "--threshold", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["exact_field_sum"] is True
    assert summary["wrong_clerks_named"] == ["clerk-0"]
    assert summary["clerks_answered"] == 12


def test_cli_table(capsys):
    assert main([*ARGS, "--quiet", "--seed", "3"]) == 0
    out, err = capsys.readouterr()
    assert "field sum equals the sum of the encoded inputs exactly: True" in out
    assert "aggregation of 30 participants, d=5" in out
    assert err == ""


def test_cli_explicit_packing_and_threshold(capsys):
    assert main([*ARGS, "--json", "--packing", "6", "--threshold", "2", "--clerks", "13"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["k"], summary["t"]) == (6, 2)


def test_cli_returns_1_when_the_sum_is_not_exact(monkeypatch, capsys):
    import sda.simulation

    real_run = sda.simulation.run

    def off_by_one(cfg, show_progress=True):
        report = real_run(cfg, show_progress)
        report.true_field_sum = report.true_field_sum + 1
        return report

    monkeypatch.setattr(sda.simulation, "run", off_by_one)
    assert main([*ARGS, "--json"]) == 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["exact_field_sum"] is False


def test_cli_help_mentions_simulate(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "simulate" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--help"])
    assert exc.value.code == 0
    assert "--participants" in capsys.readouterr().out


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"sda {__version__}"


def test_cli_without_a_command_prints_help(capsys):
    assert main([]) == 2
    assert "simulate" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [
    ["--clerks", "0"], ["--participants", "0"], ["--participants", "-3"],
    ["--dimension", "x"], ["--dropped-clerks", "-1"], ["--wrong-clerks", "1.5"],
    ["--max-errors", "-1"], ["--packing", "0", "--threshold", "1"], ["--no-such-option"],
])
def test_cli_bad_arguments_exit_2(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*ARGS, *bad])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulat"])
    assert exc.value.code == 2


@pytest.mark.parametrize("bad", [
    ["--packing", "5"],  # without --threshold
    ["--threshold", "2"],  # without --packing
    ["--dropped-clerks", "6", "--wrong-clerks", "5"],  # more than the 10 clerks
])
def test_cli_inconsistent_arguments_return_2(bad, capsys):
    assert main([*ARGS, *bad]) == 2
    assert "sda: error" in capsys.readouterr().err


@pytest.mark.parametrize("bad,match", [
    (["--packing", "3", "--threshold", "2"], "split-set"),  # n = 10 >= 2r - t = 8
    (["--clerks", "2"], "at least 3"),
    (["--wrong-clerks", "2"], ""),  # more wrong results than the safe radius corrects
])
def test_cli_protocol_errors_return_1(bad, match, capsys):
    assert main([*ARGS, "--quiet", *bad]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sda: error:") and match in err


def test_parser_defaults_match_the_design():
    args = build_parser().parse_args(["simulate"])
    assert (args.participants, args.clerks, args.dimension) == (2000, 80, 100)
    assert args.packing is None and args.threshold is None and not args.json


def test_installed_console_script():
    sda = Path(sys.executable).parent / "sda"
    assert sda.exists(), f"console script not installed next to {sys.executable}"
    proc = subprocess.run(
        [str(sda), "simulate", "--participants", "40", "--clerks", "10", "--dimension", "5",
         "--json", "--quiet"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["exact_field_sum"] is True
    assert summary["participants"] == 40 and summary["clerks"] == 10
