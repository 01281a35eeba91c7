"""Gradio's file route serves nothing outside its own cache: not system files, not user data."""

import urllib.error
import urllib.request

import pytest


@pytest.fixture()
def server(start_server, models_dir, tmp_path):
    (tmp_path / "user_data").mkdir(exist_ok=True)
    (tmp_path / "settings.yaml").write_text("preset: Default\n")
    return start_server("--models-dir", str(models_dir), "--model", "parlour-micro")


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_files_outside_allowed_paths_are_not_served(server, tmp_path, models_dir):
    from tests.conftest import ROOT

    targets = ["/etc/passwd", str(tmp_path / "settings.yaml"), str(ROOT / "README.md"),
               str(models_dir / "parlour-micro" / "config.json"), "../../../etc/passwd", "%2Fetc%2Fpasswd",
               str(tmp_path / "user_data" / "chats.sqlite")]
    for target in targets:
        assert status_of(f"{server.url}/gradio_api/file={target}") in (403, 404), target
