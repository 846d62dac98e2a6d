"""``python -m pipeline``: the CLI of :mod:`pipeline.cli`.

The read-only commands (validate, show, list) end the process at once when they are done: tearing
down the ~3,000 modules torch, imgaug and timm import costs about a second, a third of a validate call
(`python benchmarks/validate_time.py`). They have no files open and no background work, so once the
output is flushed nothing is lost; the other commands exit the ordinary way.
"""

import logging
import os
import sys

from pipeline.cli import main

READ_ONLY = {"validate", "show", "list"}

status = main()
if len(sys.argv) > 1 and sys.argv[1] in READ_ONLY:
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # `... | head` closed the pipe: its reader has what it wanted
        pass
    os._exit(status)
sys.exit(status)
