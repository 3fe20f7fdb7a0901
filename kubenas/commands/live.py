"""`kubenas scale DIR N`, `kubenas suspend DIR`, `kubenas resume DIR`: change a running `kubenas run`.

DIR is the run's --output. The run describes itself in DIR/run.json (its pid
and its Redis URL, without a password: give that in KUBENAS_REDIS_PASSWORD
when an external Redis needs one). These commands write the search's live spec
(kubenas.queue.live_spec, the record the operator writes on a cluster) with
the next revision: the controller applies the budget and suspend within a
second, and the runner starts or stops trainer processes to match
budget.parallelism. Suspended, the controller hands out nothing more and the
running trials finish; then the trainers stop (nothing is lost or trained
twice). The controller keeps the applied change in its checkpoint, so running
the same `kubenas run` command again continues with it (still scaled, or still
suspended until `kubenas resume`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kubenas.commands.common import fail, number_in, whole_number_in
from kubenas.errors import KubenasError


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="the results directory (--output) of a running `kubenas run`")
    if command == "scale":
        parser.add_argument("trainers", type=whole_number_in(1, 1024),
                            help="trainers to run: the search's budget.parallelism (kubenas suspend for none)")
    parser.add_argument("--wait", type=number_in(0, 600), default=15.0,
                        help="seconds to wait for the run to apply the change (0: do not wait)")


def run(command: str, args: argparse.Namespace) -> int:
    try:
        return _change(command, args)
    except KubenasError as exc:
        return fail(str(exc))


def _change(command: str, args: argparse.Namespace) -> int:
    import redis
    from pydantic import ValidationError

    from kubenas.local.run_directory import RUN_INFO, running_search
    from kubenas.manifest import describe_errors
    from kubenas.queue.connection import connect, redact
    from kubenas.queue.keys import SearchKeys
    from kubenas.queue.live_spec import LiveSpec, read_live_spec, write_live_spec
    from kubenas.spec import BudgetSpec

    directory = Path(args.directory)
    info = running_search(directory)
    keys = SearchKeys(info["namespace"], info["name"])
    url = info["redisUrl"]
    client = connect(url, client_name=f"kubenas-{command}:{keys.search}")
    try:
        previous = read_live_spec(client, keys)
        if previous is None:  # nothing changed yet: the budget the run started with
            previous = LiveSpec(budget=BudgetSpec.model_validate(info.get("budget") or {}),
                                suspend=bool(info.get("suspend")), revision=int(info.get("appliedRevision") or 0))
        budget = previous.budget.model_dump(by_alias=True)
        suspend = previous.suspend
        if command == "scale":
            budget["parallelism"] = args.trainers
        else:
            suspend = command == "suspend"
        try:
            live = LiveSpec(budget=BudgetSpec.model_validate(budget), suspend=suspend,
                            revision=previous.revision + 1)
        except ValidationError as exc:
            raise KubenasError("; ".join(describe_errors(exc))) from None
        write_live_spec(client, keys, live)
    except redis.RedisError as exc:
        raise KubenasError(f"the run's Redis at {redact(url)} did not answer ({exc}); is the run "
                           f"(pid {info.get('pid')}) still alive?") from None

    what = {"scale": f"{live.budget.parallelism} trainer{'s' if live.budget.parallelism != 1 else ''}"
                     + (" (still suspended: `kubenas resume` starts them)" if live.suspend else ""),
            "suspend": "suspended: the running trials finish, then the trainers stop",
            "resume": f"resumed with {live.budget.parallelism} trainers"}[command]
    print(f"search {keys.search}: {what} (revision {live.revision})")
    if args.wait <= 0:
        return 0
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        try:
            applied = json.loads((directory / RUN_INFO).read_text()).get("appliedRevision", 0)
        except (OSError, ValueError):
            applied = 0
        if applied >= live.revision:
            print(f"applied by the run (pid {info.get('pid')})")
            return 0
        time.sleep(0.2)
    return fail(f"the run (pid {info.get('pid')}) did not apply revision {live.revision} within {args.wait:g}s; "
                f"it will when it next polls (see {directory / 'logs'})")
