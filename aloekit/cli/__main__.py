"""``python -m aloekit.cli``."""

from aloekit.cli.main import main

main()
