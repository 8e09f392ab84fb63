"""Entry point of the SDK's sender process (``python -m producers.sdk.sender_child``).

A module of its own so that ``sender_process`` runs under its own name in the child: the queued
calls' ``IN_CHILD`` marker unpickles as ``producers.sdk.sender_process.IN_CHILD``.
"""

from producers.sdk.sender_process import main

if __name__ == "__main__":
    main()
