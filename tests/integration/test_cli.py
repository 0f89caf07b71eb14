"""The commands the README promises: `demo` runs and cleans up; the docs match the settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from enricher.settings import FIELDS, flag, markdown_table

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_the_pipeline_and_leaves_nothing_behind() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "enricher", "demo", "--duration", "4", "--every", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    ports = re.findall(r"127\.0\.0\.1:(\d+)", out)
    assert len(ports) == 2, out
    # A product line once a tick has been enriched: spot and a 1m candle with its tick count.
    assert re.search(r"^NIFTY\s+\d+\.\d{2}\s.*/.*, \d+$", out, re.MULTILINE), out
    assert "stopped: processed" in out
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    for port in ports:
        assert f":{port}" not in processes, f"redis-server on {port} still runs"
        assert f"--port {port}" not in processes, f"SecantusDB on {port} still runs"


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    begin = readme.index("\n", readme.index("<!-- settings:begin")) + 1
    assert readme[begin : readme.index("<!-- settings:end -->")] == markdown_table(), (
        "regenerate the table with: python -m enricher settings --markdown"
    )
    for spec in FIELDS:
        assert f"`{spec.metadata['env']}`" in readme, spec.name
        assert f"`{flag(spec)}`" in readme, spec.name


def test_readme_opens_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    head = readme[: readme.index("## How it works")]
    assert "pip install -e '.[demo]' && python -m enricher demo" in head
    assert "pip install -e '.[test]' && pytest" in head


def test_check_command_passes_against_the_test_servers(redis_base_url: str, mongo_url: str, db_name: str) -> None:
    env = {**os.environ, "REDIS_URL": redis_base_url, "MONGO_URL": mongo_url, "ENRICHER_MONGO_DB": db_name}
    result = subprocess.run(
        [sys.executable, "-m", "enricher", "check"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   redis ping" in result.stdout
    assert "ok   mongodb indexes" in result.stdout
