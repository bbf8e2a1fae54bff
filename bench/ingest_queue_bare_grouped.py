"""The second reference of ``bench.ingest_queue``: the rows of the bare baseline
(``bench.ingest_queue_bare``), the threads of a process inserting theirs in shared groups
through the product's group commit (``models.group_commit`` with ``ingest.grouped``'s
settings), one ``executemany`` and one commit a group: what grouping allows when a group costs
next to nothing.

Run by ``dramatiq bench.ingest_queue_bare_grouped`` with the bare baseline's environment. The
product is imported when the module is, as the worker imports it: at start-up, not with the
first measured message.
"""

from __future__ import annotations

from typing import Any

import dramatiq

from bench.ingest_queue_bare import INSERT, connection, row
from ingest.grouped import GATHER_FOR, MAX_GROUP
from models.group_commit import GroupCommit


def _insert_group(events: list[dict[str, Any]]) -> list[None]:
    with connection() as conn:
        with conn.cursor() as cursor:
            cursor.executemany(INSERT, [row(event) for event in events])
        conn.commit()
    return [None] * len(events)


_groups: GroupCommit[dict[str, Any], None] = GroupCommit(
    _insert_group, MAX_GROUP, gather_for=GATHER_FOR
)


@dramatiq.actor(queue_name="bare", max_retries=0)
def bare_grouped_insert(event: dict[str, Any]) -> None:
    _groups.submit(event)
