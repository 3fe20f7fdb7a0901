"""Acting on a signal without deadlocking the thread it interrupts.

Python runs a signal handler in the main thread between two bytecodes, and that
can be while the main thread holds a lock, for example the one inside
threading.Event.wait. A handler that takes the same lock (Event.set does) then
waits for itself forever: the process ignores SIGTERM until the kubelet's
SIGKILL, and the trial it should have handed back is lost to the lease timeout.
"""

from __future__ import annotations

import threading
from typing import Callable


def act_on_signal(action: Callable[[], object]) -> None:
    """Run `action` (which may take locks) on a short-lived thread, not in the handler itself."""
    threading.Thread(target=action, name="on-signal", daemon=True).start()
