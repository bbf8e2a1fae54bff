"""Reports: pure statistics, no I/O.

- ``reports.nps``: NPS bands, estimate with adjusted-Wald interval, two-sample comparison.
- ``reports.aapor``: AAPOR outcome rates (RR, COOP, REF, CON) and Wilson intervals.
- ``reports.adjustment``: propensity-weighted NPS, balance (SMD) and worst/best-case bounds.
- ``reports.timing``: NPS and response rate per delay arm against a reference arm.
"""
