"""The statistics of the report, pure functions of numbers: NPS, AAPOR rates, adjustment, timing."""
