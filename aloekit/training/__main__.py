"""``python -m aloekit.training sft|dpo ...``: the ``aloe train`` command, for ``accelerate launch -m``."""

import sys

from aloekit.cli import cli

if __name__ == "__main__":
    cli(["train", *sys.argv[1:]], prog_name="python -m aloekit.training")
