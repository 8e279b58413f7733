"""The coordinator's server optimiser (DESIGN §8): FedAdam, from Reddi et al., "Adaptive Federated
Optimization" (ICLR 2021, Algorithm 2), over the head's flat parameters. Pure functions over a frozen
state; `save_state` / `load_state` are the shell a restarted coordinator resumes from.

Each round reveals the sum over N devices of their clipped gradients plus the round's DP noise, in
quantised units (`sda`'s Revealed.field_sum; `values` is the same over the scale). The pseudo-gradient
is its mean, g = sum / (scale N), noise included: the noise is what makes the sum private and is never
taken out. Devices send a gradient (one local step) rather than a model delta, so the paper's
Delta_t = -eta_l g and eta_l folds into the server rate:

    m_t = beta1 m_{t-1} + (1 - beta1) g
    v_t = beta2 v_{t-1} + (1 - beta2) g^2
    x_{t+1} = x_t - eta m_t / (sqrt(v_t) + tau)

with m_{-1} = 0 and v_{-1} = tau^2 (the paper's v_{-1} >= tau^2) and no bias correction, as in the
paper. tau bounds the adaptivity: a coordinate whose gradient is far below tau moves like SGD with
rate eta / tau; the noise in v also slows down coordinates whose signal is mostly noise.

Beyond the optimiser, the state keeps what releases need across restarts: every round applied (a
round applies once), the rounds since the last release, the cumulative zCDP rho of every round that
touched the state (the released model's central privacy: anything computed from the sums is
post-processing of all of them, including steps later discarded), and the released parameters. Devices
compute the next round's gradients at the *released* head, so a step the validation refused is
discarded (`discard_step`: back to the released parameters; the moments keep what they learnt).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..kws.head import NPZ_ERRORS
from .atomic import save_npz_atomic
from .errors import LearningError
from .privacy import RoundCost

STATE_FORMAT = 1


@dataclass(frozen=True)
class FedAdamConfig:
    """Server learning rate eta, decays beta1 and beta2, adaptivity tau (Reddi et al.'s defaults for
    their tasks: beta1 0.9, beta2 0.99, tau 1e-3)."""

    learning_rate: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        for name, ok, need in (("learning_rate", self.learning_rate > 0, "> 0"),
                               ("beta1", 0 <= self.beta1 < 1, "in [0, 1)"),
                               ("beta2", 0 <= self.beta2 < 1, "in [0, 1)"),
                               ("tau", self.tau > 0, "> 0")):
            value = getattr(self, name)
            if not (ok and math.isfinite(value)):
                raise LearningError(f"FedAdam {name}: got {value!r}; need a finite number {need}")


@dataclass(frozen=True, eq=False)  # eq=False: ndarray fields
class FedAdamState:
    """params, m, v, released: (d,) float64. `step` counts applied rounds; `rounds` holds their ids in
    order, `pending` those since the last release; `rho` is the zCDP of all of them together;
    `released_version` 0 means nothing released yet (`released` is then the starting head)."""

    params: np.ndarray
    m: np.ndarray
    v: np.ndarray
    released: np.ndarray
    config: FedAdamConfig = field(default_factory=FedAdamConfig)
    step: int = 0
    rounds: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    rho: float = 0.0
    released_version: int = 0

    def __post_init__(self) -> None:
        d = self.params.shape
        if self.params.ndim != 1 or any(a.shape != d for a in (self.m, self.v, self.released)):
            raise LearningError(f"FedAdam state arrays must share one (d,) shape; got params {self.params.shape},"
                                f" m {self.m.shape}, v {self.v.shape}, released {self.released.shape}")
        if not all(np.isfinite(a).all() for a in (self.params, self.m, self.v, self.released)):
            raise LearningError("FedAdam state holds a non-finite value")
        if self.step != len(self.rounds) or not set(self.pending) <= set(self.rounds):
            raise LearningError(f"FedAdam state: step {self.step} with {len(self.rounds)} rounds applied, or pending"
                                " rounds that were never applied")

    @classmethod
    def start(cls, params: np.ndarray, config: FedAdamConfig | None = None, released_version: int = 0
              ) -> FedAdamState:
        """A fresh state at `params` (d,) (the head devices have now, version `released_version`)."""
        config = config or FedAdamConfig()
        x = np.array(params, np.float64).ravel()
        return cls(x, np.zeros_like(x), np.full_like(x, config.tau**2), x.copy(), config,
                   released_version=released_version)

    @property
    def dimension(self) -> int:
        return self.params.size


def mean_gradient(field_sum: np.ndarray, scale: float, participants: int) -> np.ndarray:
    """The pseudo-gradient (d,) float64 from a revealed sum of quantised gradients: field_sum (d,) int (centred,
    signed quantised units, DP noise included) / (scale * participants). Exact from the integers."""
    if participants < 1:
        raise LearningError(f"a revealed sum needs >= 1 participant, got {participants}")
    if not scale > 0:
        raise LearningError(f"scale must be > 0, got {scale!r}")
    return np.asarray(field_sum, np.int64).astype(np.float64) / (scale * participants)


def apply_round(state: FedAdamState, round_id: str, g: np.ndarray, cost: RoundCost) -> FedAdamState:
    """One FedAdam step with pseudo-gradient `g` (d,) from round `round_id`, whose privacy cost (as one device's
    zCDP, the central guarantee of the sum) is `cost`. LearningError for a round already applied, a gradient of
    another dimension or a non-finite one (nothing changes)."""
    if round_id in state.rounds:
        raise LearningError(f"round {round_id!r} was already applied to this state (step {state.step})")
    g = np.asarray(g, np.float64)
    if g.shape != state.params.shape:
        raise LearningError(f"round {round_id!r}: gradient of shape {g.shape}, the state has ({state.dimension},)")
    if not np.isfinite(g).all():
        raise LearningError(f"round {round_id!r}: the gradient holds a non-finite value")
    if math.isinf(cost.rho):
        raise LearningError(f"round {round_id!r} added no DP noise: a release built on it could state no epsilon")
    c = state.config
    m = c.beta1 * state.m + (1.0 - c.beta1) * g
    v = c.beta2 * state.v + (1.0 - c.beta2) * g * g
    params = state.params - c.learning_rate * m / (np.sqrt(v) + c.tau)
    return replace(state, params=params, m=m, v=v, step=state.step + 1, rounds=(*state.rounds, round_id),
                   pending=(*state.pending, round_id), rho=state.rho + cost.rho)


def mark_released(state: FedAdamState, version: int) -> FedAdamState:
    """The current parameters went out as release `version` (> the last one): devices compute at them now."""
    if version <= state.released_version:
        raise LearningError(f"release versions only grow: {version} after {state.released_version}")
    return replace(state, released=state.params.copy(), released_version=version, pending=())


def discard_step(state: FedAdamState) -> FedAdamState:
    """Back to the released parameters (the candidate was refused); moments, rounds and rho are kept."""
    return replace(state, params=state.released.copy())


def save_state(path: Path, state: FedAdamState) -> None:
    """Write the state as .npz (no pickle), atomically: a crash keeps the previous state whole."""
    c = state.config
    save_npz_atomic(Path(path), format=np.array(STATE_FORMAT), params=state.params, m=state.m, v=state.v,
                    released=state.released, step=np.array(state.step), rho=np.array(state.rho),
                    released_version=np.array(state.released_version),
                    rounds=np.array(state.rounds, dtype=str), pending=np.array(state.pending, dtype=str),
                    config=np.array([c.learning_rate, c.beta1, c.beta2, c.tau]))


def load_state(path: Path) -> FedAdamState:
    """Read a state written by `save_state`; LearningError naming the file when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != STATE_FORMAT:
                raise LearningError(f"{path}: FedAdam state format {int(z['format'])}, this code reads {STATE_FORMAT}")
            lr, b1, b2, tau = (float(x) for x in z["config"])
            return FedAdamState(z["params"].astype(np.float64), z["m"].astype(np.float64), z["v"].astype(np.float64),
                                z["released"].astype(np.float64), FedAdamConfig(lr, b1, b2, tau), int(z["step"]),
                                tuple(str(r) for r in z["rounds"]), tuple(str(r) for r in z["pending"]),
                                float(z["rho"]), int(z["released_version"]))
    except NPZ_ERRORS as exc:
        raise LearningError(f"{path}: not a FedAdam state ({exc})") from exc
