"""The non-response adjustment as it was computed one row per invitee (reports/stats at commit
bfd71d2, unchanged but for the imports): the reference the grouped computation is tested
against."""
