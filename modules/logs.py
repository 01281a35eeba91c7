"""Logging set-up: one record, one line.

Chat titles, character names and request fields end up in log messages; a value holding CR/LF
could otherwise forge extra, official-looking log lines. The message part is escaped; tracebacks
(which the formatter appends after it) keep their lines.
"""

from __future__ import annotations

import copy
import logging


class OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record = copy.copy(record)
        message = record.getMessage()
        record.msg = message.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")
        record.args = ()
        return super().format(record)


def configure(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
