"""The learning package's error, part of `assistant`'s one hierarchy (AssistantError)."""

from __future__ import annotations

from ..errors import AssistantError


class BrokerOffline(AssistantError):
    """The learning broker did not answer (as opposed to refusing the device's login): the device listens
    anyway and connects when the broker is back (device.StartWhenReachable)."""


class BrokerRefused(AssistantError):
    """The learning broker answered and refused the device (a wrong login, a certificate that does not verify):
    a configuration to fix, not worth trying again."""


class LearningError(AssistantError):
    """A learning round this device cannot or must not take part in: the message names the parameter,
    the value that came and what was needed."""
