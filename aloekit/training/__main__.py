"""``python -m aloekit.training [train] sft|dpo ...``: the ``aloe train`` command, for ``accelerate launch -m``."""

import sys

from aloekit.cli import cli

if __name__ == "__main__":
    args = sys.argv[1:]
    # The usage line click prints reads "python -m aloekit.training train ...": accept it as written.
    cli(["train", *(args[1:] if args[:1] == ["train"] else args)], prog_name="python -m aloekit.training")
