"""SQLAlchemy models. Importing this package registers every table on ``Base.metadata``."""

from models.alerts import AlertState, DetractorAlert
from models.base import Base, utcnow
from models.customers import ConsentRecord, Customer, ErasedSubject, current_consent
from models.inbound import DeadLetter, InboundEvent
from models.lifecycle import Disposition, SkipReason, SurveyState
from models.orders import Order
from models.surveys import (
    Answer,
    MessageRecord,
    SkippedPurchase,
    Survey,
    SurveyTransition,
    move,
    record_skip,
)

__all__ = [
    "AlertState",
    "Answer",
    "Base",
    "ConsentRecord",
    "Customer",
    "DeadLetter",
    "DetractorAlert",
    "Disposition",
    "ErasedSubject",
    "InboundEvent",
    "MessageRecord",
    "Order",
    "SkipReason",
    "SkippedPurchase",
    "Survey",
    "SurveyState",
    "SurveyTransition",
    "current_consent",
    "move",
    "record_skip",
    "utcnow",
]
