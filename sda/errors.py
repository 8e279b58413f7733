"""The one exception hierarchy of the `sda` package.

Every error says what was expected and what came, so a log line is enough to act on.
"""


class SdaError(Exception):
    """Base of every error raised on purpose by `sda`."""


class ParameterError(SdaError):
    """A parameter set that would be unsafe or incorrect (overflow, threshold, committee size)."""


class EncodingError(SdaError):
    """A value that cannot be encoded into, or decoded from, the field."""


class ReconstructionError(SdaError):
    """Shares that do not determine one polynomial: too few, or too many of them wrong."""


class CryptoError(SdaError):
    """A cryptographic check failed."""


class BadSignature(CryptoError):
    """A signature that does not verify under the claimed signer's key."""


class DecryptionFailed(CryptoError):
    """A sealed box that does not open with our key (tampered, or sealed to someone else)."""


class MessageError(SdaError):
    """Bytes from the network that are not a valid message: truncated, extra, wrong type or size."""


class ProtocolError(SdaError):
    """A valid message that the protocol refuses in the current state (replay, deadline, policy)."""


class UnknownSender(ProtocolError):
    """A message from a party the registry or committee does not know."""


class AlreadyProcessed(ProtocolError):
    """A second job, participation or result for an aggregation that was already handled."""


class TransportError(SdaError):
    """The broker or the connection to it failed."""


class BrokerUnreachable(TransportError):
    """No broker answered (nothing listening, no route, no CONNACK in time): worth trying again later, unlike a
    broker that answered and refused the login."""


class StorageError(SdaError):
    """The service's database refused an operation or holds something unexpected."""
