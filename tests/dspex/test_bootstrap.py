"""The embedded default is project-local and quiet; a user's Prefect settings always win.

Each case runs in a fresh interpreter, since the bootstrap acts before Prefect is imported."""

import json
import os
import subprocess
import sys

PROBE = (
    "import json, os, dspex.bootstrap, prefect.context as c;"
    "s = c.GLOBAL_SETTINGS_CONTEXT.settings;"
    "print(json.dumps({'home': os.environ.get('PREFECT_HOME'), 'heartbeat': s.flows.heartbeat_frequency,"
    "'analytics': s.server.analytics_enabled, 'api': s.api.url}))"
)


def probe(tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DSPEX_"))}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Traceback" not in out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_embedded_default_lives_in_the_project_and_skips_heartbeats(tmp_path):
    seen = probe(tmp_path)
    assert seen["home"] == str((tmp_path / ".dspex" / "prefect").resolve())
    assert seen["heartbeat"] is None
    assert seen["analytics"] is False
    assert seen["api"] is None


def test_dspex_home_moves_everything(tmp_path):
    seen = probe(tmp_path, DSPEX_HOME=str(tmp_path / "elsewhere"))
    assert seen["home"] == str((tmp_path / "elsewhere" / "prefect").resolve())


def test_a_users_server_and_home_win(tmp_path):
    seen = probe(tmp_path, PREFECT_API_URL="http://127.0.0.1:9/api", PREFECT_HOME=str(tmp_path / "mine"))
    assert seen["api"] == "http://127.0.0.1:9/api"
    assert seen["home"] == str(tmp_path / "mine")
    assert seen["heartbeat"] is not None  # against a real server, crashed-run detection stays on
