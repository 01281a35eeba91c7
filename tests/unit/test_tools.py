"""The tool registry: built-ins (the calculator refuses anything but arithmetic), user tool files run in a
subprocess (a tool that raises, hangs, answers 10 MB or gets arguments that are not JSON gives an error
result, never an exception), name clashes, and who may manage tools."""

from __future__ import annotations

import json
import random
import textwrap

import pytest

from modules.settings import Settings
from modules.tools import builtin
from modules.tools.registry import MAX_RESULT_CHARS, Tool, ToolFailed, ToolRegistry


@pytest.mark.parametrize("expression, value", [
    ("2 + 2", 4), ("2 * (3 + 4) ** 2", 98), ("7 // 2", 3), ("7 % 4", 3), ("-3 + +1", -2), ("1 / 4", 0.25),
    ("2 ^ 10", 1024), ("0.1 * 3", 0.30000000000000004), ("12 × 3 ÷ 4", 9),
])
def test_calculator_computes_arithmetic(expression, value):
    assert builtin.calculate(expression) == value


@pytest.mark.parametrize("expression, why", [
    ("__import__('os').system('true')", "not Call"),
    ("().__class__", "not Attribute"),
    ("x + 1", "not Name"),
    ("'a' * 3", "not Constant"),
    ("[1, 2]", "not List"),
    ("lambda: 1", "not Lambda"),
    ("9 ** 9 ** 9", "exponents are limited"),
    ("10 ** 20000", "exponents are limited"),
    ("99 ** 9999", "more than 10,000 digits"),
    ("10 ** 9999 * 10 ** 9999", "more than 10,000 digits"),
    ("(-8) ** 0.5", "not a real number"),
    ("1 / 0", "division by zero"),
    ("1e308 * 10", "not a finite number"),
    ("2 +", "not an arithmetic expression"),
    ("1" * 2000, "longer than"),
])
def test_calculator_refuses_code_and_huge_numbers(expression, why):
    with pytest.raises(ToolFailed, match=why):
        builtin.calculate(expression)


def test_dice_and_datetime():
    result = builtin.roll("3d6-2", random.Random(1))
    assert len(result["rolls"]) == 3 and all(1 <= r <= 6 for r in result["rolls"])
    assert result["total"] == sum(result["rolls"]) - 2 and result["dice"] == "3d6-2"
    assert builtin.roll("d20")["dice"] == "1d20"
    for bad in ("2d1", "1000d6", "six", "2d6+"):
        with pytest.raises(ToolFailed):
            builtin.roll(bad)
    assert builtin.now("Asia/Tokyo")["datetime"].endswith("+09:00")
    with pytest.raises(ToolFailed, match="unknown time zone"):
        builtin.now("Mars/Olympus")


def registry(tmp_path, timeout=30.0) -> ToolRegistry:
    reg = ToolRegistry(tmp_path / "tools", timeout=timeout)
    for tool in builtin.tools():
        reg.add(tool)
    return reg


def test_calls_never_raise(tmp_path):
    reg = registry(tmp_path)
    ok = reg.call("calculator", '{"expression": "6 * 7"}')
    assert (ok.content, ok.error) == ("42", False) and ok.seconds >= 0
    assert reg.call("calculator", {"expression": "6 * 7"}).content == "42"
    refused = reg.call("calculator", '{"expression": "__import__(\'os\')"}')
    assert refused.error and "not Call" in refused.content
    not_json = reg.call("calculator", '{"expression": 2+2')
    assert not_json.error and "not valid JSON" in not_json.content
    assert "must be a JSON object" in reg.call("calculator", "[1, 2]").content
    assert "no tool named 'nope'" in reg.call("nope", "{}").content
    assert "documents extension is not enabled" in reg.call("search_documents", '{"query": "x"}').content
    roll = json.loads(reg.call("roll_dice", '{"dice": "2d6"}').content)
    assert 2 <= roll["total"] <= 12


def write_tool(folder, name, body, tool_name=None):
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"type": "function", "function": {"name": tool_name or name, "description": f"the {name} tool",
                                             "parameters": {"type": "object", "properties": {"text": {"type": "string"}}}}}
    (folder / f"{name}.py").write_text(f"tool = {spec!r}\n\n" + textwrap.dedent(body))


def test_user_tool_files_run_in_a_subprocess_and_fail_safely(tmp_path):
    folder = tmp_path / "tools"
    write_tool(folder, "shout", """
        import os
        def execute(arguments):
            print("noise on stdout does not corrupt the answer")
            return {"text": arguments["text"].upper(), "pid": os.getpid()}
    """)
    write_tool(folder, "raises", """
        def execute(arguments):
            raise RuntimeError("the tool broke")
    """)
    write_tool(folder, "hangs", """
        import threading
        def execute(arguments):
            threading.Event().wait()
    """)
    write_tool(folder, "huge", """
        def execute(arguments):
            return "x" * (11 * 1024 * 1024)
    """)
    write_tool(folder, "exits", """
        import os
        def execute(arguments):
            os._exit(9)
    """)
    write_tool(folder, "calculator", "def execute(arguments):\n    return 'a user file named like a built-in'\n")
    (folder / "broken.py").write_text("tool = {\n")
    (folder / "no_execute.py").write_text("tool = {'type': 'function', 'function': {'name': 'x'}}\n")
    write_tool(folder, "bad_name", "def execute(arguments):\n    return ''\n", tool_name="has space")
    reg = registry(tmp_path, timeout=3.0)
    reg.refresh_files()
    names = reg.names()
    assert {"shout", "raises", "hangs", "huge", "exits"} <= set(names)
    assert "SyntaxError" in reg.file_errors["broken.py"] and "no execute" in reg.file_errors["no_execute.py"]
    assert "1-64 letters" in reg.file_errors["bad_name.py"]
    assert reg.get("shout").confirm and reg.get("shout").source == "file"
    # the built-in keeps its name; the user file of the same name is not used
    assert reg.get("calculator").source == "builtin"

    import os

    shout = reg.call("shout", '{"text": "hi"}')
    answer = json.loads(shout.content)
    assert not shout.error and answer["text"] == "HI" and answer["pid"] != os.getpid()
    raised = reg.call("raises", "{}")
    assert raised.error and "RuntimeError: the tool broke" in raised.content and "(line 5)" in raised.content
    hung = reg.call("hangs", "{}")
    assert hung.error and "did not finish within 3 seconds" in hung.content
    huge = reg.call("huge", "{}")
    assert not huge.error and len(huge.content) <= MAX_RESULT_CHARS + 200
    assert huge.content.endswith(f"only the first {MAX_RESULT_CHARS:,} are shown]") and "11,534,336 characters" in huge.content
    exited = reg.call("exits", "{}")
    assert exited.error and "exited with code 9" in exited.content
    bad_args = reg.call("shout", "not json")
    assert bad_args.error and "not valid JSON" in bad_args.content


def test_a_result_over_the_limit_is_cut_and_says_so(tmp_path):
    reg = registry(tmp_path)
    reg.add(Tool("big", "", {"type": "object"}, lambda a: "y" * (MAX_RESULT_CHARS + 500)))
    result = reg.call("big", "{}")
    assert result.content.startswith("y" * 100) and "[truncated: the result was 10,486,260 characters" in result.content


class FakeMcp:
    def __init__(self, tools):
        self._tools = tools

    def tools(self):
        return self._tools


def test_name_clash_local_wins_and_the_mcp_tool_is_prefixed(tmp_path):
    mcp_tool = Tool("calculator", "remote", {"type": "object"}, lambda a: "from mcp", source="mcp", origin="srv",
                    confirm=True, title="srv.calculator")
    dotted = Tool("fs.read file", "", {"type": "object"}, lambda a: "read", source="mcp", origin="srv", confirm=True)
    other = Tool("weather", "remote", {"type": "object"}, lambda a: "sunny", source="mcp", origin="srv", confirm=True)
    reg = ToolRegistry(None, mcp=FakeMcp([mcp_tool, other, dotted]))
    for tool in builtin.tools():
        reg.add(tool)
    tools = reg.tools()
    # the model sees srv__calculator (OpenAI names allow no dots); people see srv.calculator
    assert tools["calculator"].source == "builtin" and tools["srv__calculator"].label == "srv.calculator"
    assert reg.call("srv__calculator", "{}").content == "from mcp" and reg.call("weather", "{}").content == "sunny"
    assert reg.call("fs_read_file", "{}").content == "read"
    schema = reg.schemas(["srv__calculator", "gone"])
    assert [s["function"]["name"] for s in schema] == ["srv__calculator"]


def test_admins():
    assert Settings().is_admin("local")  # no logins: the one local user manages tools
    assert not Settings(listen=True, insecure_listen=True).is_admin("local")  # ... not everyone on the network
    with_logins = Settings(auth="ann:pw,bob:pw", admin_users=["ann"])
    assert with_logins.is_admin("ann") and not with_logins.is_admin("bob") and not with_logins.is_admin("local")
    assert not Settings(auth="ann:pw").is_admin("ann")  # logins but no --admin-users: nobody


def test_a_tool_whose_schema_the_model_side_refuses_is_left_out(tmp_path):
    reg = registry(tmp_path)
    reg.add(Tool("odd", "", {"type": "array"}, lambda a: "x"))
    assert [s["function"]["name"] for s in reg.schemas(["odd", "calculator"])] == ["calculator"]
