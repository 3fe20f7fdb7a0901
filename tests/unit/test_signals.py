"""Signal handlers act on a thread of their own: the interrupted thread may hold the lock."""

from __future__ import annotations

import threading

from kubenas.signals import act_on_signal


def test_an_event_is_set_even_while_the_interrupted_thread_holds_its_lock():
    event = threading.Event()
    # What the main thread holds inside Event.wait when a signal handler interrupts it there;
    # Event.set() from the handler would wait for this lock forever.
    with event._cond:
        act_on_signal(event.set)  # returns at once
        assert not event.is_set()
    assert event.wait(10)
