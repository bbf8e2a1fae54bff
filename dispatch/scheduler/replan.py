"""Planning again from the scheduler: after a config edit, and when an anchor never came.

Re-planning finds the pending surveys planned under another version of the ``[schedule]``
section (``OperatorConfig.schedule_version``, recorded in ``config_version``) through the partial
index ``ix_surveys_pending_version``: ``config_version < current OR config_version > current``,
two range scans that touch only the stale rows (a bare ``!=`` cannot use the index and would
read every pending row on every pass), plus a probe for rows with no version recorded (``NULL``
compares as neither, and such a row must not keep an old plan for ever). The versions are
hashes, so "older" means nothing: only "another" does, which the ranges cover. Once
re-planned a row carries the current version, so the next pass finds nothing, in a few index
probes, however many surveys are pending.

Surveys planned by earlier versions recorded the whole config's hash
(``OperatorConfig.version``) instead: a row carrying the current config's whole hash was
planned under the same ``[schedule]`` too, so it is current as well. Without that, the first
pass after an upgrade would re-plan every pending survey, and during a rolling upgrade old and
new schedulers would re-plan each other's rows on every pass.
"""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from dispatch import planning
from dispatch.tick_report import TickReport
from models import Survey, SurveyState
from models.lifecycle import PENDING_STATES
from models.surveys import in_states

S = SurveyState


def replan_stale(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    now: datetime,
    limit: int,
    report: TickReport,
) -> None:
    """Surveys planned under another ``[schedule]`` and not yet queued are planned again, so
    an operator's edit of the delay reaches every survey not yet sent."""
    current = sorted({config.schedule_version, config.version})
    other_version = or_(
        Survey.config_version < current[0],
        *(
            and_(Survey.config_version > low, Survey.config_version < high)
            for low, high in pairwise(current)
        ),
        Survey.config_version > current[-1],
        Survey.config_version.is_(None),
    )
    with factory() as session, session.begin():
        rows = session.scalars(
            select(Survey)
            .where(in_states(*PENDING_STATES), other_version)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        planning.replan_many(session, rows, config, now)
        report.replanned += len(rows)


def anchor_timeouts(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    now: datetime,
    limit: int,
    report: TickReport,
) -> None:
    """Surveys whose anchor event never came by their deadline are anchored on the purchase plus
    ``anchor_timeout``."""
    with factory() as session, session.begin():
        rows = session.scalars(
            select(Survey)
            .where(in_states(S.waiting_anchor), Survey.due_at <= now)
            .order_by(Survey.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        planning.replan_many(session, rows, config, now)
        report.anchored += len(rows)
