"""The trial queue over Redis Streams. This package's __init__ imports nothing (no redis).

    keys.py             every Redis key name of a search (pure)
    messages.py         the JSON messages on the streams, as pydantic models (pure)
    connection.py       connect, redact, outages and backoff
    scripts.py          the atomic steps, as Lua scripts called with named arguments
    streams.py          what both sides share: stream caps, rejected entries, consumer groups
    controller_side.py  ControllerQueue: publish trials, read results, acknowledge after checkpoint
    trainer_side.py     TrainerQueue: claim, heartbeat, report, complete, hand back (owner-checked)
    live_spec.py        budget and suspend changes for a running controller
"""
