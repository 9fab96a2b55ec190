"""SSH to physical boards (``connect: ssh``), with asyncssh: the laptop side of a real bench.

A package of one concern per module:

- ``hostkeys``: the bench's pinned host keys (a project-local known_hosts);
- ``ssh``: sessions with every board in parallel, host keys checked against the pins, ``sudo -n``;
- ``boardpython``: what a board's interpreter accepts (version, glibc, wheel tags), from a probe;
- ``wheelhouse``: the wheels a board group needs, built on the laptop and cached by content hash;
- ``doctor``: the preflight of every board, changing nothing;
- ``deploy``: the board's environment (venv from the wheelhouse) and its bundle, pushed by SFTP
  into a versioned folder with an atomic ``current`` link;
- ``agents``: the agents started detached on the boards, their status, logs and stop.

Nothing here runs on a board by itself: every command is an argv list sent over a session.
"""
