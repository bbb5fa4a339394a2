"""Naming of the tests' scratch directories."""

# Directories of session-scoped fixtures start with this and live to the end of the
# session; the others are deleted when their module passes (tests/conftest.py).
SESSION_DIR_PREFIX = "session-"
