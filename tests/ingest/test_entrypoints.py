"""The job module, the `rayline ingest` command and progress reporting, run for real in-process."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cluster.cli.main import app
from cluster.logs import configure_logging
from ingest.progress import Progress
from jobs import ingest as job
from tests.ingest.helpers import CUSTOMERS_CONTRACT, CUSTOMERS_CSV


def test_job_prints_one_result_line_with_version_and_counts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    summary = job.main(["--source", str(CUSTOMERS_CSV), "--contract", str(CUSTOMERS_CONTRACT),
                        "--dataset", "customers", "--root", str(tmp_path)])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("RAYLINE_RESULT "))
    result = json.loads(line.removeprefix("RAYLINE_RESULT "))
    assert result["version"] == summary["version"] and result["counts"]["rows_in"] == 3000


def test_job_errors_are_one_line_and_an_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        job.main(["--source", str(tmp_path / "none.csv"), "--contract", str(CUSTOMERS_CONTRACT),
                  "--dataset", "x", "--root", str(tmp_path)])
    assert exit_.value.code == 7
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"ingest: error: source {tmp_path}/none.csv: no such file"


def test_rayline_ingest_runs_locally_and_reports_the_version(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["--state-dir", str(tmp_path / "state"), "ingest", "--source", str(CUSTOMERS_CSV),
                                      "--contract", str(CUSTOMERS_CONTRACT), "--dataset", "customers",
                                      "--root", str(tmp_path / "cat")])
    assert result.exit_code == 0, result.output
    assert "customers v-" in result.output and "in 3,000" in result.output


def test_progress_is_a_live_line_on_a_tty_and_json_lines_otherwise() -> None:
    tty = io.StringIO()
    live = Progress("d", stream=tty, tty=True)
    live.begin("validate")
    live.rows(1000, 2000)
    live.step("validate", rows_in=2000)
    assert "\r" in tty.getvalue() and "1,000 rows of 2,000" in tty.getvalue()

    logs = io.StringIO()
    configure_logging("test", fmt="json", stream=logs)
    try:
        quiet = Progress("d", stream=io.StringIO(), tty=False)
        quiet.begin("deduplicate")
        quiet.rows(10)
        quiet.step("deduplicate", exact_duplicates=3)
    finally:
        configure_logging("test", fmt="text")
    lines = [json.loads(x) for x in logs.getvalue().splitlines()]
    assert [x["step"] for x in lines] == ["deduplicate"] * 3
    assert lines[1]["rows_scanned"] == 10 and lines[2]["exact_duplicates"] == 3 and lines[2]["done"] is True
