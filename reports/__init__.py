"""Reports: pure statistics, no I/O.

- ``reports.stats.nps``: NPS bands, estimate with adjusted-Wald interval, two-sample comparison.
- ``reports.stats.aapor``: AAPOR outcome rates (RR, COOP, REF, CON) and Wilson intervals.
- ``reports.stats.adjustment``: propensity-weighted NPS, balance (SMD) and worst/best-case bounds.
- ``reports.stats.timing``: NPS and response rate per delay arm against a reference arm.
"""
