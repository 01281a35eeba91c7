"""A real server process with a failing extension: chat keeps working and the Session tab says what failed."""

from __future__ import annotations

import textwrap

import pytest


@pytest.fixture()
def broken_extension(tmp_path):
    folder = tmp_path / "user_data" / "extensions" / "broken_output"
    folder.mkdir(parents=True)
    (folder / "script.py").write_text(textwrap.dedent("""
        def output_modifier(string, state, is_chat=False):
            raise RuntimeError("broken on purpose")
        """))
    return folder


def test_failing_extension_does_not_take_the_chat_down(start_server, models_dir, broken_extension):
    from gradio_client import Client

    server = start_server("--models-dir", str(models_dir), "--model", "parlour-micro",
                          "--extensions", "broken_output", "token_stats", "no_such_extension")
    client = Client(server.url + "/", verbose=False)
    status = client.predict(api_name="/extensions_status")
    assert "broken_output" in status and "✅ enabled" in status
    assert "no_such_extension" in status and "no extension named" in status
    result = client.predict("hello", api_name="/chat_send")
    history = result[1] if isinstance(result, (list, tuple)) else result
    assert history and history[-1]["role"] == "assistant"
    server.wait_until(lambda h: h["requests"] >= 1 and h["active"] == 0)
    status = client.predict(api_name="/extensions_status")
    assert "broken on purpose" in status and "output_modifier" in status
    # switch it off from the Session tab, without a restart
    checked, summary, status = client.predict(["token_stats"], api_name="/extensions_apply")
    assert checked == ["token_stats"] and "Enabled: token_stats" in summary
    assert "| broken_output | user | off |" in status
