"""keyed pseudonyms: no customer id in clear outside the customer row

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

Until now the shop's customer id was stored in clear in ``inbound_events.subject_key`` and
``dead_letters.subject_key``, and an erasure tombstone was the bare SHA-256 of the id, which
hashing candidate ids reverses. The application now stores keyed pseudonyms instead (HMAC-SHA256
under a key derived from ``NPS_SECRET_KEY``, ``models.privacy``). A migration does not have that
key, so this one does everything that needs none, and marks what the application re-keys:

- ``erased_subjects``: the column is widened and every existing tombstone becomes
  ``sha256:<digest>``. The application still refuses late events with it, and re-keys it (a
  keyed pseudonym is computed from the digest, the id is never needed) when a scheduler starts
  with the key: ``nps-dispatch scheduler`` and ``nps-dispatch tick`` do it before their first
  pass (``ingest.subjects.rekey_legacy_pseudonyms``).
- Rows about customers already erased (those whose clear id hashes to a tombstone, and webhooks
  tied to their surveys) lose their payload, survey link and content digest; dead letters about
  them keep only the event's non-personal fields; their surveys lose their time zone.
- ``inbound_events.subject_key`` and ``dead_letters.subject_key``: emptied everywhere (they held
  clear ids). A webhook that was applied but is tied to no survey loses its payload too, since
  erasure could no longer find it; webhooks tied to a survey are still found through it, and
  erasure finds dead letters without a subject key by searching their text.

Downgrade restores the column width and the old tombstones' form; what was emptied stays empty.
"""

from collections.abc import Iterator, Sequence
from hashlib import sha256
from json import JSONDecodeError, dumps, loads

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEGACY = "sha256:"
KEPT_OF_AN_ERASED_EVENT = ("type", "event_id", "occurred_at", "order_id")
CHUNK = 500

tombstones = sa.table(
    "erased_subjects", sa.column("subject_hash", sa.String), sa.column("erased_at")
)
inbound = sa.table(
    "inbound_events",
    sa.column("id", sa.Integer),
    sa.column("source", sa.String),
    sa.column("subject_key", sa.String),
    sa.column("survey_id", sa.Integer),
    sa.column("payload", sa.JSON(none_as_null=True)),
    sa.column("handled_at"),
    sa.column("fingerprint", sa.String),
)
letters = sa.table(
    "dead_letters",
    sa.column("id", sa.Integer),
    sa.column("subject_key", sa.String),
    sa.column("payload", sa.Text),
    sa.column("error", sa.Text),
)
surveys = sa.table(
    "surveys",
    sa.column("id", sa.Integer),
    sa.column("customer_id", sa.Integer),
    sa.column("timezone", sa.String),
)
customers = sa.table("customers", sa.column("id", sa.Integer), sa.column("erased_at"))


def _chunks(values: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def _digest(value: str) -> str:
    return sha256(value.encode()).hexdigest()


def _without_personal_data(payload: str) -> str:
    try:
        event = loads(payload)
    except JSONDecodeError:
        return "{}"
    if not isinstance(event, dict):
        return "{}"
    return dumps({k: event[k] for k in KEPT_OF_AN_ERASED_EVENT if k in event}, ensure_ascii=False)


def _forget_erased(conn: sa.Connection) -> None:
    erased = set(conn.scalars(sa.select(tombstones.c.subject_hash)))
    if not erased:
        return
    keys = conn.scalars(
        sa.select(inbound.c.subject_key).where(inbound.c.subject_key.is_not(None)).distinct()
    )
    about_erased = [key for key in keys if _digest(key) in erased]
    for chunk in _chunks(about_erased):
        conn.execute(
            inbound.update()
            .where(inbound.c.subject_key.in_(chunk))
            .values(payload=None, survey_id=None, fingerprint=None)
        )
    erased_surveys = (
        sa.select(surveys.c.id)
        .join(customers, customers.c.id == surveys.c.customer_id)
        .where(customers.c.erased_at.is_not(None))
    )
    conn.execute(
        inbound.update()
        .where(inbound.c.survey_id.in_(erased_surveys))
        .values(payload=None, survey_id=None, fingerprint=None)
    )
    conn.execute(surveys.update().where(surveys.c.id.in_(erased_surveys)).values(timezone=None))
    rows = conn.execute(
        sa.select(letters.c.id, letters.c.subject_key, letters.c.payload, letters.c.error).where(
            letters.c.subject_key.is_not(None)
        )
    ).all()
    for row in rows:
        if _digest(row.subject_key) in erased:
            conn.execute(
                letters.update()
                .where(letters.c.id == row.id)
                .values(
                    payload=_without_personal_data(row.payload),
                    error=f"{row.error}; personal data not kept: customer erased",
                )
            )


def upgrade() -> None:
    with op.batch_alter_table("erased_subjects", schema=None) as batch_op:
        batch_op.alter_column(
            "subject_hash", existing_type=sa.String(length=64), type_=sa.String(length=80)
        )
    conn = op.get_bind()
    # A payload set to None was written as a JSON null, which IS NOT NULL in SQL (the column now
    # writes SQL NULL). Shop events' rows never had a payload and are left as they are.
    conn.execute(
        inbound.update()
        .where(inbound.c.source != "shop", sa.cast(inbound.c.payload, sa.Text) == "null")
        .values(payload=sa.null())
    )
    _forget_erased(conn)
    # Applied webhooks tied to no survey: only a clear subject key led erasure to them.
    conn.execute(
        inbound.update()
        .where(
            inbound.c.source != "shop",
            inbound.c.handled_at.is_not(None),
            inbound.c.survey_id.is_(None),
            inbound.c.payload.is_not(None),
        )
        .values(payload=None)
    )
    # Emptying a column of every ledger row: dropping and adding it back is one catalogue
    # change on PostgreSQL instead of a rewrite of each row.
    with op.batch_alter_table("inbound_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbound_events_subject_key"))
        batch_op.drop_column("subject_key")
    with op.batch_alter_table("inbound_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject_key", sa.String(length=128), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_inbound_events_subject_key"), ["subject_key"], unique=False
        )
    conn.execute(
        letters.update().where(letters.c.subject_key.is_not(None)).values(subject_key=None)
    )
    conn.execute(
        tombstones.update()
        .where(sa.func.length(tombstones.c.subject_hash) == 64)
        .values(subject_hash=LEGACY + tombstones.c.subject_hash)
    )


def downgrade() -> None:
    conn = op.get_bind()
    conn.execute(
        tombstones.update()
        .where(tombstones.c.subject_hash.startswith(LEGACY))
        .values(subject_hash=sa.func.substr(tombstones.c.subject_hash, len(LEGACY) + 1))
    )
    with op.batch_alter_table("erased_subjects", schema=None) as batch_op:
        batch_op.alter_column(
            "subject_hash", existing_type=sa.String(length=80), type_=sa.String(length=64)
        )
