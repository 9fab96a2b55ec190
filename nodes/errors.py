"""Exception hierarchy of the board side (nodes, and what the agent reports).

``testbed`` may catch these; ``nodes`` never imports ``testbed``. The root, ``NodeError``,
stands under linkemu's ``HarnessError`` beside testbed's ``TestbedError``, so the CLI catches
all three packages' errors in one place.
"""
from __future__ import annotations

from linkemu.errors import HarnessError


class NodeError(HarnessError):
    """Base of every error a board-side component raises on purpose."""


class RuntimeLoadError(NodeError):
    """A shard could not be loaded by the chosen runtime."""


class TransportError(NodeError):
    """A data-plane transport could not be opened or used."""


class AgentConfigError(NodeError):
    """A board config (agent.json) or a run command is malformed, or of another format version;
    the message names the file (or command), the field's path and what was expected."""

    exit_code = 2
