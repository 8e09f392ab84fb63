"""Application SDK: log LLM calls and feedback as rftloop events."""

from producers.sdk.logger import FeedbackClient, InferenceLogger, LoggerMisuse
from producers.sdk.redaction import Redactor
from producers.sdk.sender import SenderClosed
from producers.sdk.sender_process import SenderProcessFailed

__all__ = [
    "FeedbackClient",
    "InferenceLogger",
    "LoggerMisuse",
    "Redactor",
    "SenderClosed",
    "SenderProcessFailed",
]
