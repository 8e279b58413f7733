"""The one exception hierarchy of the `assistant` package."""


class AssistantError(Exception):
    """Base of every error raised on purpose by `assistant`."""


class AudioError(AssistantError):
    """Audio that cannot be read or captured: the message names the fix."""


class ModelError(AssistantError):
    """A model file that is missing, corrupt, or does not match its card."""


class RecordingsError(AssistantError):
    """A folder of labelled recordings not laid out as expected: the message names the path and the layout."""


class StoreError(AssistantError):
    """The device store cannot do what was asked: the message names the path, the row or the setting."""


class ControlError(AssistantError):
    """The control channel between `assistant run` and `assistant tui` failed: the message names the socket
    and the fix."""
