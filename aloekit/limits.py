"""Bounds shared by the settings models and the command-line flags (a module of constants: cheap to import)."""

MAX_CONVERSATIONS = 10_000_000
"""Most conversations (or personas) in one run: far above any real run, far below SQLite's INTEGER limit."""
MAX_TURNS = 1_000
"""Most user turns in one conversation."""
MAX_CONCURRENCY = 10_000
"""Most conversations in progress at once."""
SQLITE_INT_MIN, SQLITE_INT_MAX = -(2**63), 2**63 - 1
"""Seeds and budgets are stored in SQLite INTEGER columns."""
MAX_BATCH_ROWS = 65_536
"""Rows per device per step (and accumulation steps): far above any device's memory, yet a number the
trainers' samplers can take (one past ``sys.maxsize`` failed mid-run with an ``islice`` error)."""
MIN_MAX_LENGTH = 16
"""The shortest training --max-length: a chat template's own tokens take about this many."""
