"""`modules.logging_colors` for text-generation-webui extensions: its `logger`, writing to Parlour's log.

(One copy of this module per App; see the package docstring.)
"""

import logging

from modules.tgw_compat import missing_attributes

#: text-generation-webui's logger name; records go wherever Parlour's logging sends them
logger = logging.getLogger("textgen")

__getattr__ = missing_attributes("modules.logging_colors")
