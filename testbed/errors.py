"""Exception hierarchy of the laptop side.

Every error carries a message that says what was expected; the CLI prints it on one line
and exits non-zero. Library code raises these, it never calls exit(). The root,
``TestbedError``, stands under linkemu's ``HarnessError`` beside nodes' ``NodeError``.
"""
from __future__ import annotations

from linkemu.errors import HarnessError


class TestbedError(HarnessError):
    """Base of every error the laptop side raises on purpose."""

    __test__ = False  # not a pytest test class


class ConfigError(TestbedError):
    """A YAML file a user edits is invalid: names file, line, key and what was expected."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.detail = message
        where = file or "<config>"
        if line is not None:
            where = f"{where}:{line}"
        prefix = f"{where}: " + (f"{key}: " if key else "")
        super().__init__(prefix + message)


class DatasetError(TestbedError):
    """A dataset is missing or unreadable; the message says what to install or pass."""

    exit_code = 2


class BrokerError(TestbedError):
    """The MQTT broker could not be started or reached."""


class RunError(TestbedError):
    """A run could not start or had to be aborted (agents never ready, ...)."""
