"""Runs inside the subprocess that holds one user tool file (modules/tools/runner.py starts it).

    python child.py describe TOOL.py          -> stdout: {"tool": {...}}
    python child.py run TOOL.py < ARGS.json   -> stdout: {"result": "..."} or {"error": "..."}

Only the standard library is imported here, so a tool starts fast. The tool's own prints go to
stderr: stdout carries nothing but the one answer line, which is cut to the result limit before it
is written (the parent reads a bounded amount).
"""

import importlib.util
import json
import os
import sys
import traceback

LIMIT = int(os.environ.get("PARLOUR_TOOL_RESULT_CHARS", str(10 * 1024 * 1024)))


def load(path):
    spec = importlib.util.spec_from_file_location("parlour_user_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def answer(out, value):
    out.write(json.dumps(value, ensure_ascii=False))
    out.flush()


def main():
    command, path = sys.argv[1], sys.argv[2]
    out = sys.stdout
    sys.stdout = sys.stderr  # the tool's prints must not corrupt the answer
    try:
        module = load(path)
        if command == "describe":
            answer(out, {"tool": getattr(module, "tool", None), "has_execute": callable(getattr(module, "execute", None))})
            return
        arguments = json.loads(sys.stdin.read() or "{}")
        result = module.execute(arguments)
        if not isinstance(result, str):
            result = json.dumps(result, ensure_ascii=False, default=str)
        if len(result) > LIMIT:
            result = (result[:LIMIT] + f"\n[truncated: the result was {len(result):,} characters; "
                      f"only the first {LIMIT:,} are shown]")
        answer(out, {"result": result})
    except BaseException as exc:  # the parent reports it as the call's error result
        tb = traceback.extract_tb(exc.__traceback__)
        where = next((f" (line {f.lineno})" for f in reversed(tb) if f.filename == path), "")
        answer(out, {"error": f"{type(exc).__name__}: {exc}{where}"})


if __name__ == "__main__":
    main()
