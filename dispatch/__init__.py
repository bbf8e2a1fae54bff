"""The survey domain: consent at send time, planning, timing, sending, the scheduler, responses."""
