"""Learning from the owner's labels without sending them (issue 7, DESIGN §8): the head's clipped
gradient (gradient), its quantisation (quantise), distributed DP noise shares (noise), the privacy
ledger (privacy), whether to take part (policy), and the shell that prepares and commits a device's
participation in a round (participate)."""

from .errors import LearningError
from .gradient import DeviceGradient, Examples, clip_l2, device_gradient, examples_from, flatten, unflatten
from .noise import NoiseMode, clerk_noise_share, noise_headroom, participant_noise_share
from .participate import NotEligible, PreparedParticipation, RoundSpec, eligibility, prepare, record_refusal
from .policy import Eligibility, LearningPolicy, Refusal, decide
from .privacy import DEFAULT_DELTA, Accounting, PrivacyLedger, RoundCost, load_ledger, record_round
from .quantise import l2_sensitivity, quantise

__all__ = ["DEFAULT_DELTA", "Accounting", "DeviceGradient", "Eligibility", "Examples", "LearningError",
           "LearningPolicy", "NoiseMode", "NotEligible", "PreparedParticipation", "PrivacyLedger", "Refusal",
           "RoundCost", "RoundSpec", "clerk_noise_share", "clip_l2", "decide", "device_gradient", "eligibility",
           "examples_from", "flatten", "l2_sensitivity", "load_ledger", "noise_headroom", "participant_noise_share",
           "prepare", "quantise", "record_refusal", "record_round", "unflatten"]
