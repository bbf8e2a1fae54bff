"""The non-response adjustment as it was computed one row per invitee (reports/stats at commit
bfd71d2, unchanged but for the imports): the reference the grouped computation is tested
against. ``invitees.py`` builds its covariates one invitee at a time under the current
specification (order value in steps of 0.1 on the log scale, whole days to send capped at 60)."""
