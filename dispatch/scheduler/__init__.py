"""The scheduler: the database is the schedule; this turns due rows into queue messages.

Each pass (`nps-dispatch tick`, or every few seconds under `nps-dispatch scheduler`):

- surveys planned under an older config version are planned again (a changed delay reaches every
  survey not yet queued; queued and sent ones are untouched), found through an index so that a
  pass with nothing stale costs two index probes (``replan.py``);
- surveys whose anchor never came get anchored on purchase + ``anchor_timeout``;
- due surveys are claimed in batches (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so any number of
  schedulers share the work without taking the same row), re-checked (cancellation, consent,
  quiet hours *now*), moved to ``queued`` and committed, and only then enqueued, with a fixed
  number of statements per batch (``claim.py``);
- ``queued`` rows older than ``stuck_after`` are enqueued again: a message lost by the broker,
  or a scheduler killed between its commit and its enqueue. A duplicate is harmless because the
  worker claims ``queued -> sending`` before sending;
- due reminders are enqueued (each claimed by its count, so at most one per reminder);
- invitations whose response window has closed end as ``no_response``, and answered ones still
  waiting for their follow-up as ``partial``: past its window every survey is in a final state;
- provider webhooks that were stored but failed while being applied are applied again (each
  after its back-off);
- raw webhook payloads older than the retention period are emptied (personal data);
- sends left in ``sending`` past a timeout are settled from the provider (never re-sent). This
  is the one step that calls a provider, so it runs last: a slow provider cannot hold up the
  others, and a replayed status callback may already have settled a send.

Every step runs on its own: one that raises is logged (ids, the exception's type and a masked
message, never the SQL parameters a database error quotes), counted in
:attr:`TickReport.failures` and in ``nps_scheduler_step_failures_total{step=...}``, and the pass
goes on with the next step. Settling is isolated per survey as well, so one send the provider
cannot answer for does not leave the others stuck.

The steps live by role: ``claim.py`` (due surveys), ``replan.py`` (config edits, anchor
time-outs), ``upkeep.py`` (the others), ``core.py`` (the pass), ``errors.py`` (its log lines).
"""

from dispatch.scheduler.core import Scheduler
from dispatch.scheduler.errors import describe_error

__all__ = ["Scheduler", "describe_error"]
