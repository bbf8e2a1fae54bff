"""``[survey]``: the shop's name, the response window, reminders, score bands, the follow-up
question of each band and an optional industry benchmark NPS shown beside the dashboard's."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Literal, Self

from pydantic import Field, model_validator

from config.values import ConfigModel, PositiveDuration, cross_field_error, format_duration

__all__ = ["BandName", "Bands", "Followup", "Reminder", "SurveyConfig"]


BandName = Literal["detractor", "passive", "promoter"]


class Reminder(ConfigModel):
    after: PositiveDuration = timedelta(days=3)
    max: int = Field(default=1, ge=0, le=10)


class Bands(ConfigModel):
    """Score bands: they cover 0..10 exactly once, in the order detractor, passive, promoter."""

    detractor: tuple[int, int] = (0, 6)
    passive: tuple[int, int] = (7, 8)
    promoter: tuple[int, int] = (9, 10)

    @model_validator(mode="after")
    def _partition(self) -> Self:
        problems: list[tuple[str, str]] = []
        named: list[tuple[BandName, tuple[int, int]]] = [
            ("detractor", self.detractor),
            ("passive", self.passive),
            ("promoter", self.promoter),
        ]
        for name, (low, high) in named:
            if not (0 <= low <= 10 and 0 <= high <= 10):
                problems.append((name, f"[{low}, {high}] is outside the scores 0..10"))
            elif low > high:
                problems.append((name, f"starts at {low} after it ends at {high}"))
        if problems:
            raise cross_field_error(problems)
        if self.detractor[0] != 0:
            problems.append(("detractor", f"must start at 0, not {self.detractor[0]}"))
        for (before, (_, end)), (after, (start, _)) in itertools.pairwise(named):
            if start <= end:
                problems.append(
                    (after, f"overlaps {before}: {before} ends at {end}, {after} starts at {start}")
                )
            elif start > end + 1:
                gap = f"{end + 1}" if start == end + 2 else f"{end + 1}..{start - 1}"
                problems.append((after, f"leaves a gap after {before}: {gap} in no band"))
        if self.promoter[1] != 10:
            problems.append(("promoter", f"must end at 10, not {self.promoter[1]}"))
        if problems:
            raise cross_field_error(problems)
        return self

    def band_of(self, score: int) -> BandName:
        """The band of a 0..10 score."""
        if self.detractor[0] <= score <= self.detractor[1]:
            return "detractor"
        if self.passive[0] <= score <= self.passive[1]:
            return "passive"
        if self.promoter[0] <= score <= self.promoter[1]:
            return "promoter"
        raise ValueError(f"score {score} is outside 0..10")


class Followup(ConfigModel):
    promoter: str = Field(default="What did you like most?", min_length=1)
    passive: str = Field(default="What would make it a 10?", min_length=1)
    detractor: str = Field(default="What should we improve?", min_length=1)

    def question_for(self, band: BandName) -> str:
        return str(getattr(self, band))


class SurveyConfig(ConfigModel):
    shop_name: str = Field(default="Example Shop", min_length=1)
    response_window: PositiveDuration = timedelta(days=14)
    reminder: Reminder = Reminder()
    bands: Bands = Bands()
    followup: Followup = Followup()
    # An industry NPS the dashboard compares with. Display only: left out of the config's
    # version (model_dump), so setting or changing it re-plans no survey.
    benchmark: float | None = Field(
        default=None, ge=-100, le=100, allow_inf_nan=False, exclude=True
    )

    @model_validator(mode="after")
    def _reminder_inside_window(self) -> Self:
        if self.reminder.max > 0 and self.reminder.after >= self.response_window:
            raise cross_field_error(
                [
                    (
                        "reminder.after",
                        f"must be shorter than survey.response_window "
                        f"({format_duration(self.response_window)}), or no reminder is ever sent",
                    )
                ]
            )
        return self
