"""The rise/fall machine of one real server's health.

Rules of residence: pure. No clocks (callers pass `now`), no I/O, no logging. `step` turns one probe
verdict into a new `RsHealth` and, when the server crosses between serving and not serving, a
`Transition`. States: up, falling (still serving, failures counting towards `fall`), down, rising
(not serving, successes counting towards `rise`).
"""

from __future__ import annotations

from dataclasses import dataclass

UP = "up"
DOWN = "down"
RISING = "rising"
FALLING = "falling"

FLAP_WINDOW = 60.0  # seconds
FLAP_MAX = 5  # more transitions than this inside the window = flapping


@dataclass(frozen=True)
class Transition:
    """A change between serving (up) and not serving (down)."""

    old: str  # "up" | "down"
    new: str
    reason: str
    at: float


@dataclass(frozen=True)
class RsHealth:
    """Health of one real server under one check. Times are in the caller's monotonic clock."""

    state: str = DOWN
    since: float = 0.0  # last change of up/down (or when the state was set at start)
    last_reason: str = ""
    rise: int = 2
    fall: int = 3
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    probes: int = 0  # verdicts applied since the state was created
    transitions: int = 0  # total up/down changes
    recent: tuple[float, ...] = ()  # transition times inside the flap window
    flapping: bool = False
    ramp_from: float | None = None  # set when probes brought the server up (slow_start ramps from here)
    origin: str = "initial"  # where the start state came from: initial, serving, saved, probe

    @property
    def is_up(self) -> bool:
        """Serving: up, or up with failures not yet reaching `fall`."""
        return self.state in (UP, FALLING)

    @property
    def checked(self) -> bool:
        return self.probes > 0


def initial(up: bool, now: float, rise: int = 2, fall: int = 3, reason: str = "initial",
            origin: str = "initial") -> RsHealth:
    """A start state: up or down with no counters."""
    return RsHealth(state=UP if up else DOWN, since=now, last_reason=reason, rise=rise, fall=fall,
                    origin=origin)


def _flap(h: RsHealth, now: float, transitioned: bool, window: float,
          limit: int) -> tuple[tuple[float, ...], bool]:
    recent = tuple(t for t in h.recent if now - t < window)
    if transitioned:
        recent += (now,)
    if len(recent) > limit:
        return recent, True
    if h.flapping and len(recent) > limit // 2:
        return recent, True  # hysteresis: calm down to half the limit before clearing
    return recent, False


def step(state: RsHealth, ok: bool, reason: str, now: float, *, flap_window: float = FLAP_WINDOW,
         flap_max: int = FLAP_MAX) -> tuple[RsHealth, Transition | None]:
    """Apply one probe verdict. Returns the new state and the transition it caused, if any."""
    s = state
    new_state = s.state
    succ, fail = (s.successes + 1, 0) if ok else (0, s.failures + 1)
    if ok:
        if s.state in (UP, FALLING):
            new_state = UP
        elif succ >= s.rise:
            new_state = UP
        else:
            new_state = RISING
    else:
        if s.state in (DOWN, RISING):
            new_state = DOWN
        elif fail >= s.fall:
            new_state = DOWN
        else:
            new_state = FALLING
    was_up = s.is_up
    now_up = new_state in (UP, FALLING)
    transition = None
    since = s.since
    ramp_from = s.ramp_from
    if was_up != now_up:
        transition = Transition(UP if was_up else DOWN, UP if now_up else DOWN, reason, now)
        since = now
        ramp_from = now if now_up else None
    if transition is None and not s.recent and not s.flapping:
        recent: tuple[float, ...] = ()
        flapping = False  # the common case (a steady server): no window to trim
    else:
        recent, flapping = _flap(s, now, transition is not None, flap_window, flap_max)
    # direct construction: dataclasses.replace costs ~2x more and runs once per probe
    return RsHealth(state=new_state, since=since, last_reason=reason, rise=s.rise, fall=s.fall, successes=succ,
                    failures=fail, probes=s.probes + 1, transitions=s.transitions + (transition is not None),
                    recent=recent, flapping=flapping, ramp_from=ramp_from, origin=s.origin), transition
