"""``pdserve bench`` end to end: options, errors, and a full run writing JSON and PNGs."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from bench_scripted_router import ScriptedRouter

from pdserve.bench.cli import add_parser, build_parser, main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run_ok(router: ScriptedRouter, tmp_path: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    out = tmp_path / "out"
    status = main(["--target", f"fake={router.address}", "--num-requests", "4",
                   "--input-len", "16", "--output-len", "4", "--no-progress",
                   "--output-dir", str(out), *extra])
    assert status == 0
    return json.loads((out / "result.json").read_text())  # type: ignore[no-any-return]


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
        for option in action.option_strings:
            assert option in text


def test_pdserve_bench_help_lists_every_option() -> None:
    """The top-level ``pdserve bench --help`` documents the same options as the parser."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-m", "pdserve.cli", "bench", "--help"],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    for action in build_parser()._actions:
        for option in action.option_strings:
            assert option in proc.stdout, option
    assert "docs/bench.md" in proc.stdout or "TTFT" in proc.stdout


def test_add_parser_registers_bench_with_a_handler() -> None:
    root = argparse.ArgumentParser(prog="pdserve")
    add_parser(root.add_subparsers(dest="command"))
    args = root.parse_args(["bench", "--rate", "2", "--slo", "ttft=1s"])
    assert args.command == "bench" and callable(args.handler)
    assert args.rate == 2.0 and args.slo.ttft_s == 1.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--slo", "ttft=abc"], "--slo: 'abc' is not a duration like 500ms or 0.5s"),
        (["--slo", "speed=1s"], "--slo: unknown SLO 'speed'"),
        (["--rate", "0"], "--rate: --rate must be > 0"),
        (["--rate", "-3"], "--rate: --rate must be > 0"),
        (["--burstiness", "0"], "--burstiness must be > 0"),
        (["--workload", "sharegpt"], "--workload: invalid choice: 'sharegpt'"),
        (["--workload", "jsonl"], "--workload jsonl needs --dataset"),
        (["--workload", "jsonl", "--dataset", "/nonexistent/prompts.jsonl"],
         "--dataset: /nonexistent/prompts.jsonl does not exist"),
        (["--dataset", "x.jsonl"], "--dataset is only used by --workload jsonl"),
        (["--num-requests", "0"], "--num-requests: must be >= 1"),
        (["--range-ratio", "1.5"], "--range-ratio: must be in [0, 1)"),
        (["--timeout", "30"], "--timeout: '30' is not a duration"),
        (["--percentiles", "50,101"], "percentiles must be in (0, 100]"),
        (["--target", "a=nohost"], "is not host:port"),
        (["--target", "a=h:1", "--target", "a=h:2"], "--target: names must be unique"),
        (["--vocab-size", "20"], "vocab_size must be > 100"),
        (["--concurrency", "0"], "--concurrency: must be >= 1"),
        (["--channels", "0"], "--channels: must be >= 1"),
        (["--warmup", "-1"], "--warmup: must be >= 0"),
        (["--input-len", "many"], "--input-len: 'many' is not an integer"),
        (["--temperature", "-1"], "--temperature: must be a finite number >= 0"),
        (["--connect-timeout", "0s"], "--connect-timeout: must be > 0"),
        (["--percentiles", "p99"], "--percentiles: 'p99' is not a number"),
        (["--compare-mode", "parallel"], "--compare-mode: invalid choice: 'parallel'"),
        (["--slo", "ttft=0ms"], "--slo: the ttft SLO must be > 0"),
        (["--slo", ""], "--slo: '' sets no SLO"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(argv: list[str], message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_jsonl_content_exits_2_naming_the_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    dataset = tmp_path / "bad.jsonl"
    dataset.write_text('{"prompt": "hi"}\n')
    with pytest.raises(SystemExit) as info:
        main(["--workload", "jsonl", "--dataset", str(dataset)])
    assert info.value.code == 2
    assert f"{dataset}:1: output_len must be an integer >= 1" in capsys.readouterr().err


def test_python_m_entry_point_reports_bad_options() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-m", "pdserve.bench", "--slo", "ttft=abc"],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 2
    assert "--slo: 'abc' is not a duration like 500ms or 0.5s" in proc.stderr


def test_full_run_writes_a_valid_report_and_plots(scripted_router: ScriptedRouter,
                                                  tmp_path: Path) -> None:
    report = _run_ok(scripted_router, tmp_path, "--model", "ok:cli", "--rate", "20",
                     "--slo", "ttft=1s,tpot=200ms", "--seed", "3", "--warmup", "1")
    assert report["version"] == 1
    config = report["config"]
    assert config["targets"] == [{"name": "fake", "address": scripted_router.address}]
    assert config["workload"]["name"] == "random" and config["workload"]["seed"] == 3
    assert config["arrivals"]["rate"] == 20.0 and config["slo"] == {"ttft": 1.0, "tpot": 0.2}
    summary = report["summaries"]["fake"]
    assert summary["completed"] == 4 and summary["failed"] == 0
    assert summary["total_input_tokens"] == 64 and summary["total_output_tokens"] == 16
    assert summary["good_requests"] == 4
    assert summary["goodput"] == pytest.approx(4 / summary["duration_s"])
    assert summary["ttft"]["percentiles_ms"]["p50"] >= 100
    assert len(report["records"]) == 4
    for record in report["records"]:
        assert len(record["chunk_s"]) == 4 and record["status"] == "OK"
    # 4 measured requests plus the warm-up one
    assert len(scripted_router.servicer.received["ok:cli"]) == 5
    for name in ("latency_cdf.png", "throughput.png"):
        data = (tmp_path / "out" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_interleaved_comparison_writes_ratios(scripted_router: ScriptedRouter,
                                              second_scripted_router: ScriptedRouter,
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    status = main(["--target", f"first={scripted_router.address}",
                   "--target", f"second={second_scripted_router.address}",
                   "--compare-mode", "interleaved", "--model", "ok:cli-cmp",
                   "--workload", "shared-prefix", "--num-tenants", "2", "--prefix-len", "8",
                   "--question-len", "2", "--output-len", "3", "--num-requests", "3",
                   "--no-progress", "--no-plots", "--output-dir", str(out)])
    assert status == 0
    report = json.loads((out / "result.json").read_text())
    assert set(report["summaries"]) == {"first", "second"}
    assert [run["targets"] for run in report["runs"]] == [["first", "second"]]
    rows = {row["metric"]: row for row in report["comparison"]}
    throughput = rows["request_throughput"]
    assert throughput["ratios"]["second"] == pytest.approx(
        throughput["values"]["second"] / throughput["values"]["first"])
    assert "ttft_p99_ms" in rows and rows["ttft_p99_ms"]["higher_is_better"] is False
    assert not (out / "latency_cdf.png").exists()
    sent = [[tuple(r.request.token_ids.ids) for r in router.servicer.received["ok:cli-cmp"]]
            for router in (scripted_router, second_scripted_router)]
    assert sent[0] == sent[1] and len(sent[0]) == 3
    assert "second / first" in capsys.readouterr().out


def test_every_request_failing_exits_1(scripted_router: ScriptedRouter, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["--target", f"fake={scripted_router.address}", "--model", "exhausted:cli",
                   "--num-requests", "2", "--no-progress", "--no-plots",
                   "--output-dir", str(tmp_path)])
    assert status == 1
    assert "every request failed" in capsys.readouterr().out
    report = json.loads((tmp_path / "result.json").read_text())
    assert report["summaries"]["fake"]["errors"] == {"RESOURCE_EXHAUSTED": 2}


def test_an_unreachable_target_exits_1(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    status = main(["--target", f"gone=127.0.0.1:{port}", "--connect-timeout", "500ms",
                   "--no-progress", "--output-dir", str(tmp_path)])
    assert status == 1
    assert "did not accept a connection" in capsys.readouterr().out
    assert not (tmp_path / "result.json").exists()
