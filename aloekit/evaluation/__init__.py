"""evaluation stage (see the issues that build it)."""
