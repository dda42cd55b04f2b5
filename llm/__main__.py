"""python -m llm <command> ...: see llm/cli."""

import os
import sys

from llm.cli import main
from llm.run import torchrun_world

if __name__ == "__main__":
    code = main()
    if torchrun_world() > 1:
        # A torchrun rank leaves without Python's teardown: its run is saved and its process group destroyed,
        # and what the teardown would still free is torch's communication threads, which now and then abort a
        # rank that has finished ("terminate called without an active exception"), and torchrun then reports
        # the whole run as failed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
