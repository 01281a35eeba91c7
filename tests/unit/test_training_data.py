"""Training data files: each format read into records, and every bad file refused with its line named."""

from __future__ import annotations

import json

import pytest

from modules.store import ChatStore
from modules.training.data import (MAX_DATASET_BYTES, DataError, dataset_path, fingerprint, list_datasets, read_chats,
                                   read_file, save_upload)
from tests.training_data import chat_lines, write_jsonl


def test_openai_messages_with_parts_and_developer_role(tmp_path):
    path = write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": [{"role": "developer", "content": "Be brief."},
                      {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                      {"role": "assistant", "content": "Hello."}]}])
    (record,) = read_file(path)
    assert record.source == "chats.jsonl line 1"
    assert record.messages == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                               {"role": "assistant", "content": "Hello."})


def test_sharegpt_conversations(tmp_path):
    path = write_jsonl(tmp_path / "sg.jsonl", [{"conversations": [{"from": "system", "value": "S"},
                                                                  {"from": "human", "value": "Q"},
                                                                  {"from": "gpt", "value": "A"}]}])
    assert [t["role"] for t in read_file(path)[0].messages] == ["system", "user", "assistant"]


def test_alpaca_jsonl_and_json_array(tmp_path):
    rows = [{"instruction": "Translate", "input": "chat", "output": "cat"}, {"instruction": "Say hi", "output": "hi"}]
    jsonl = read_file(write_jsonl(tmp_path / "a.jsonl", rows))
    array_path = tmp_path / "a.json"
    array_path.write_text(json.dumps(rows))
    array = read_file(array_path)
    assert [r.messages for r in jsonl] == [r.messages for r in array]
    assert jsonl[0].messages == ({"role": "user", "content": "Translate\n\nchat"},
                                 {"role": "assistant", "content": "cat"})
    assert array[1].source == "a.json item 2"


def test_plain_text_and_text_records(tmp_path):
    (tmp_path / "notes.txt").write_text("Line one.\n\nLine two.\n")
    assert read_file(tmp_path / "notes.txt")[0].text == "Line one.\n\nLine two.\n"
    records = read_file(write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "b"}]))
    assert [r.text for r in records] == ["a", "b"]


@pytest.mark.parametrize(("content", "fmt", "expected"), [
    ('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [ oops\n', "auto", "d.jsonl line 2: not JSON"),
    ("Just some prose, not JSON.\n", "openai", "d.jsonl line 1: not JSON"),
    ('{"instruction": "x"}\n', "auto", "d.jsonl line 1: missing 'output'"),
    ('{"instruction": "x", "output": "y"}\n{"instruction": "x"}\n', "auto", "d.jsonl line 2: missing 'output'"),
    ('{"messages": [{"role": "user"}]}\n', "auto", "d.jsonl line 1, message 1: missing 'content'"),
    ('{"messages": [{"role": "tool", "content": "x"}]}\n', "auto", "role 'tool' cannot be trained on"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n', "alpaca",
     "d.jsonl line 1: not alpaca data — alpaca needs 'instruction' and 'output', but it looks like openai"),
    ('{"instruction": "q", "output": "a"}\n{"conversations": []}\n', "auto", "d.jsonl line 2: not alpaca data"),
    ('{"prompt": "q", "completion": "a"}\n', "auto", "d.jsonl line 1: unknown format (found completion, prompt)"),
    ('[1, 2]', "auto", "d.jsonl item 1: a record must be a JSON object"),
    ("\n\n   \n", "auto", "d.jsonl holds no samples"),
])
def test_bad_files_name_the_file_and_line(tmp_path, content, fmt, expected):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=None) as caught:
        read_file(path, fmt)
    assert expected in str(caught.value)


def test_binary_file_claimed_as_text_names_the_line(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_bytes(b"fine line\n\x89PNG\xff\xfe\n")
    with pytest.raises(DataError, match=r"weights.txt line 2: not UTF-8 text \(byte 0x89"):
        read_file(path)


def test_empty_text_file(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty.txt holds no text"):
        read_file(tmp_path / "empty.txt")


def test_two_gigabyte_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as handle:
        handle.truncate(2 * 2**30)  # sparse: no disk used, and reading it would take all the memory
    with pytest.raises(DataError, match=r"huge.jsonl is 2.0 GiB; the largest training file is 256 MiB"):
        read_file(path)
    with pytest.raises(DataError, match="2.0 GiB"):
        save_upload(path, tmp_path / "training")
    assert not (tmp_path / "training").exists()
    assert MAX_DATASET_BYTES < 2 * 2**30


def test_saved_chats_from_the_store(tmp_path):
    store = ChatStore(tmp_path / "chats.sqlite")
    chat = store.create_chat("ann", title="Trip")
    parent = None
    for role, text in [("user", "Where to?"), ("assistant", "Rome."), ("user", "When?"), ("assistant", "May.")]:
        parent = store.add_message("ann", chat, role, text, parent_id=parent)
    (record,) = read_chats(store, "ann", [chat])
    assert record.source == f"chat {chat} ('Trip')"
    assert [t["content"] for t in record.messages] == ["Where to?", "Rome.", "When?", "May."]
    with pytest.raises(DataError, match=f"chat {chat} does not exist"):
        read_chats(store, "bob", [chat])  # another user's chat is not theirs to train on
    assert fingerprint(None, [record]) != fingerprint(None, read_chats(store, "ann", [chat])[:0])


def test_uploads_keep_their_name_and_never_overwrite(tmp_path):
    folder = tmp_path / "training"
    first = write_jsonl(tmp_path / "up" / "data.jsonl", chat_lines(2))
    assert save_upload(first, folder) == "data.jsonl"
    assert save_upload(first, folder) == "data.jsonl"  # the same file again: nothing new
    other = write_jsonl(tmp_path / "up2" / "data.jsonl", chat_lines(3))
    assert save_upload(other, folder) == "data-2.jsonl"
    assert list_datasets(folder) == ["data-2.jsonl", "data.jsonl"]
    with pytest.raises(DataError, match="bad dataset name"):
        dataset_path(folder, "../data.jsonl")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(DataError, match="training files are"):
        save_upload(tmp_path / "model.bin", folder)
