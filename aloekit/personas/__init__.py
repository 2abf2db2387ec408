"""personas stage (see the issues that build it)."""
