"""Logged values cannot forge log lines; secrets never reach logs or settings dumps."""

import logging

import httpx

from modules.logs import OneLineFormatter


def test_crlf_in_a_logged_value_stays_on_one_line():
    formatter = OneLineFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("parlour", logging.INFO, __file__, 1, "renamed chat to %s", (
        "hi\r\nERROR parlour: admin logged in",), None)
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line
    assert line == "INFO renamed chat to hi\\r\\nERROR parlour: admin logged in"


def test_secrets_stay_out_of_logs_and_the_session_dump(start_server, models_dir, tmp_path):
    server = start_server("--models-dir", str(models_dir), "--model", "parlour-micro", "--api-key", "sk-very-secret",
                          "--auth", "ann:pa55word-xyz", "--admin-key", "admin-secret-42")
    assert httpx.get(server.url + "/v1/models").status_code == 401
    ok = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer sk-very-secret"})
    assert ok.status_code == 200
    bad = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2},
                     headers={"Authorization": "Bearer wrong-key-777"})
    assert bad.status_code == 401 and "wrong-key-777" not in bad.text
    from modules.settings import load_settings

    dump = str(load_settings(["--api-key", "sk-very-secret", "--auth", "ann:pa55word-xyz",
                              "--admin-key", "admin-secret-42", "--settings", str(tmp_path / "none.yaml")]).public_dict())
    log = server.log.read_text()
    for secret in ("sk-very-secret", "pa55word-xyz", "admin-secret-42", "wrong-key-777"):
        assert secret not in log and secret not in dump
