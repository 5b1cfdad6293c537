"""``dspex session open|turn|show|close`` with the bundled offline LM and the embedded SQLite store."""

import json

from typer.testing import CliRunner

from deployments.cli import app

runner = CliRunner()


def test_open_turn_show_close_round_trip(tmp_path):
    opened = runner.invoke(
        app, ["session", "open", "--signature", "question, context -> answer", "--ttl", "600"]
    )
    assert opened.exit_code == 0, opened.output
    session_id = opened.stdout.strip()
    notes = tmp_path / "notes.txt"
    notes.write_text("Hamlet was written by William Shakespeare.")
    turn = runner.invoke(
        app, ["session", "turn", session_id, "question=Who wrote Hamlet?", f"context=@{notes}"]
    )
    assert turn.exit_code == 0, turn.output
    assert "Shakespeare" in json.loads(turn.stdout)["answer"]
    second = runner.invoke(
        app,
        [
            "session",
            "turn",
            session_id,
            "--json",
            json.dumps({"question": "Who?", "context": "Paris is in France."}),
        ],
    )
    assert second.exit_code == 0, second.output

    shown = json.loads(runner.invoke(app, ["session", "show", session_id, "--json"]).stdout)
    assert shown["status"] == "live" and shown["version"] == 2
    assert [t["question"] for t in shown["history"]] == ["Who wrote Hamlet?", "Who?"]
    table = runner.invoke(app, ["session", "show", session_id])
    assert "2 turn(s)" in table.stdout and "Who wrote Hamlet?" in table.stdout

    assert runner.invoke(app, ["session", "close", session_id]).exit_code == 0
    refused = runner.invoke(app, ["session", "turn", session_id, "question=again", "context=x"])
    assert refused.exit_code == 2 and "SessionExpiredError" in refused.stderr
    assert (
        json.loads(runner.invoke(app, ["session", "show", session_id, "--json"]).stdout)["status"] == "closed"
    )


def test_bad_inputs_and_unknown_sessions_are_clean_errors():
    unknown = runner.invoke(app, ["session", "show", "nope"])
    assert unknown.exit_code == 2 and "SessionNotFoundError" in unknown.stderr
    session_id = runner.invoke(app, ["session", "open"]).stdout.strip()
    bad = runner.invoke(app, ["session", "turn", session_id, "not-a-pair"])
    assert bad.exit_code == 2 and "key=value" in bad.stderr
    missing = runner.invoke(app, ["session", "turn", session_id, "context=x"])
    assert missing.exit_code == 2 and "question" in missing.stderr
    bad_step = runner.invoke(app, ["session", "open", "--signature", "question ->"])
    assert bad_step.exit_code == 2 and "error" in bad_step.stderr
