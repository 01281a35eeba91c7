import os

import pytest

from modules.paths import UnsafeName, safe_child

BAD = ["../../etc/passwd", "..\\..\\win.ini", "/etc/passwd", "%2e%2e%2fsecret", "a\x00b", "a\u2215b", "a\uff0fb",
       "x" * 300, "CON", "nul.txt", "..", ".hidden", "", "   "]


@pytest.mark.parametrize("name", BAD)
def test_hostile_names_are_refused(tmp_path, name):
    with pytest.raises(UnsafeName):
        safe_child(tmp_path, name, ".yaml")


def test_plain_names_stay_inside(tmp_path):
    assert safe_child(tmp_path, "Top-P", ".yaml") == tmp_path / "Top-P.yaml"
    assert safe_child(tmp_path, "my model v2") == tmp_path / "my model v2"


def test_symlink_out_of_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(UnsafeName):
        safe_child(root, "link")
