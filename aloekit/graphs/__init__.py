"""graphs stage (see the issues that build it)."""
