"""``rayline serve status`` against a real running app (over HTTP, as a user runs it)."""

from __future__ import annotations

from typer.testing import CliRunner

from cluster.cli.main import app as cli
from tests.serve.helpers import ADMIN_TOKEN


def test_serve_status_shows_readiness_and_traffic(static_app, monkeypatch):
    monkeypatch.setenv("RAYLINE_ADMIN_TOKEN", ADMIN_TOKEN)
    result = CliRunner().invoke(cli, ["serve", "status", "--url", static_app.url])
    assert result.exit_code == 0, result.output
    assert "ready" in result.output and "'baseline': 1.0" in result.output


def test_serve_status_without_the_token_says_so(static_app, monkeypatch):
    monkeypatch.delenv("RAYLINE_ADMIN_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["serve", "status", "--url", static_app.url])
    assert result.exit_code == 0, result.output
    assert "admin token missing or wrong" in result.output
