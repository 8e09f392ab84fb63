"""`rftloop bench sequential_gate`: the trainer's sequential gate, by simulation of its own decision code.

Each trial draws 200 held-out prompts, each with its own difficulty (its chance that the incumbent
answers it right, Beta(1.5, 3.5): mean 0.30, the demo's base accuracy), one greedy answer per
prompt and version (right or wrong, as the demo gates), the candidate's chance being the
incumbent's plus the scenario's gain (capped at 1). ``SequentialGate`` (the object
``consumers.trainer.run`` drives: 2 looks, O'Brien-Fleming) sees the first 100 prompts, then, if
undecided, all 200. Two peers run on the same prompts of the same trials in the same run:
- *repeated 95 %*: the same two looks, each with the fixed 95 % paired interval (stop at the first
  whose lower bound clears 0): what re-taking a fixed-size decision as data arrives does;
- *fixed*: one 95 % test on all 200 prompts (the gate before the looks).

``trainer.gate_power_plus5_600`` sizes the demo's held-out set for a *continued* generation: a
~60 % parent, one greedy answer per prompt and version, the two answering alike except on a share
of the prompts (20 %, as offline continuations here differed on 41-72 of 300), split so the
candidate gains +5 points. The same gate decides on 600 prompts (the demo's cap at 60 % held out)
and, as the peer on the same trials, on their first 200 (what generation 2 had at 40 %).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bench.harness import Context, Result
from bench.judge_benchmark import _interval
from consumers.trainer.paired import SequentialGate, paired_gain

PROMPTS = 200
TRIALS = 2000
CONTINUED = (0.60, 0.20, 0.05)  # parent's accuracy, share of prompts answered differently, gain
CONTINUED_PROMPTS = (600, 200)  # ours (the demo's cap), peer (generation 2's held-out at 40 %)


@dataclass
class Trial:
    ours: bool  # published
    ours_scored: int  # prompts scored before it stopped
    repeated: bool
    fixed: bool


def _trial(rng: random.Random, gain: float, gate: SequentialGate) -> Trial:
    incumbent, candidate = [], []
    for _ in range(PROMPTS):
        p = rng.betavariate(1.5, 3.5)
        incumbent.append(float(rng.random() < p))
        candidate.append(float(rng.random() < min(1.0, p + gain)))
    ours, scored = False, PROMPTS
    for _, hi in gate.slices():
        look = gate.look(candidate[:hi], incumbent[:hi])
        if look.verdict != "continue":
            ours, scored = look.verdict == "better", hi
            break
    half = PROMPTS // 2
    first = paired_gain(candidate[:half], incumbent[:half]).lower > 0
    whole = paired_gain(candidate, incumbent).lower > 0
    return Trial(ours, scored, first or whole, whole)


def _decides(gate: SequentialGate, candidate: list[float], incumbent: list[float]) -> bool:
    """Whether the gate publishes, looking as the trainer does (stop at the first verdict)."""
    for _, hi in gate.slices():
        look = gate.look(candidate[:hi], incumbent[:hi])
        if look.verdict != "continue":
            return look.verdict == "better"
    raise AssertionError("the last look always decides")


def _continued(rng: random.Random, gain: float, n: int) -> tuple[list[float], list[float]]:
    """n prompts of a continued generation (CONTINUED): alike, or won / lost by the candidate."""
    accuracy, differ, _ = CONTINUED
    win, loss = (differ + gain) / 2, (differ - gain) / 2
    candidate, incumbent = [], []
    for _ in range(n):
        u = rng.random()
        if u < win:
            c, i = 1.0, 0.0
        elif u < differ:
            c, i = 0.0, 1.0
        else:
            c = i = float(rng.random() < (accuracy - loss) / (1 - differ))
        candidate.append(c)
        incumbent.append(i)
    return candidate, incumbent


def continued_power(trials: int) -> dict[str, float]:
    """Share published of a +5 and of a no-better continued generation, on 600 and on 200 prompts."""
    ours_n, peer_n = CONTINUED_PROMPTS
    gates = {n: SequentialGate(n, 2, min_gain=0.0) for n in CONTINUED_PROMPTS}
    out: dict[str, float] = {}
    for name, gain in (("plus5", CONTINUED[2]), ("aa", 0.0)):
        rng = random.Random(23)
        ours = peer = 0
        for _ in range(trials):
            candidate, incumbent = _continued(rng, gain, ours_n)
            ours += _decides(gates[ours_n], candidate, incumbent)
            peer += _decides(gates[peer_n], candidate[:peer_n], incumbent[:peer_n])
        out[f"{name}_ours"], out[f"{name}_peer"] = ours / trials, peer / trials
        print(f"bench: gate, continued generation, gain {gain:+.2f}: {trials} trials", flush=True)
    return out


def gate_figures(ctx: Context, trials: int = TRIALS) -> list[Result]:
    gate = SequentialGate(PROMPTS, 2, min_gain=0.0)
    runs: dict[float, list[Trial]] = {}
    for gain in (0.0, 0.10, 0.20):
        rng = random.Random(17)
        runs[gain] = [_trial(rng, gain, gate) for _ in range(trials)]
        print(f"bench: gate, gain {gain:+.2f}: {trials} trials", flush=True)

    def share(gain: float, rule: str) -> float:
        return sum(getattr(t, rule) for t in runs[gain]) / trials

    def scored(gain: float) -> float:
        return sum(t.ours_scored for t in runs[gain]) / trials

    method = (
        f"{trials} simulated gates per scenario through consumers.trainer.paired.SequentialGate (the "
        f"trainer's decision code, default 2 looks, O'Brien-Fleming, one-sided 2.5 %): {PROMPTS} held-out "
        "prompts, each with its own difficulty Beta(1.5, 3.5) (incumbent's chance, mean 0.30), one "
        "answer per prompt and version, the candidate's chance the incumbent's plus the gain; looks after "
        f"{PROMPTS // 2} and {PROMPTS} prompts. Peers on the same trials in the same run"
    )
    aa = share(0.0, "ours")
    cont = continued_power(trials // 2)
    accuracy, differ, gain = CONTINUED
    return [
        Result(
            "trainer.gate_aa_false_publish",
            aa,
            "share published",
            "the same two looks, each a fixed 95 % paired interval",
            share(0.0, "repeated"),
            "<= 0.025 (the design's one-sided alpha)",
            f"{method}: no-better candidate (gain 0); 95 % interval of ours {_interval(aa * trials, trials)}; "
            f"the fixed one-look test published {share(0.0, 'fixed'):.3f}",
            higher_is_better=False,
            goal_value=0.025,
        ),
        Result(
            "trainer.gate_power_plus10",
            share(0.10, "ours"),
            "share published",
            "one fixed 95 % test on all the prompts (the gate before the looks)",
            share(0.10, "fixed"),
            ">= 0.95x the fixed test's power",
            f"{method}: candidate +10 points; ours stopped at the first look in "
            f"{sum(t.ours_scored < PROMPTS for t in runs[0.10]) / trials:.1%} of trials",
            goal_ratio=0.95,
        ),
        Result(
            "trainer.gate_prompts_scored_plus20",
            scored(0.20),
            "held-out prompts scored per gate",
            "one fixed test (every prompt scored)",
            float(PROMPTS),
            "report (gate time is prompts scored x 2 versions)",
            f"{method}: candidate +20 points (the demo's generations 1-2 gained +20 to +34); "
            f"published in {share(0.20, 'ours'):.1%} of trials (fixed test {share(0.20, 'fixed'):.1%})",
            higher_is_better=False,
        ),
        Result(
            "trainer.gate_power_plus5_600",
            cont["plus5_ours"],
            "share published",
            f"the same gate on the first {CONTINUED_PROMPTS[1]} of the prompts (generation 2's held-out at 40 %)",
            cont["plus5_peer"],
            "report (the demo's held-out size for continued generations)",
            f"{trials // 2} simulated gates through consumers.trainer.paired.SequentialGate (2 looks, "
            f"O'Brien-Fleming, one-sided 2.5 %) on {CONTINUED_PROMPTS[0]} held-out prompts of a continued "
            f"generation: the parent right on {accuracy:.0%}, one greedy answer per prompt and version, the "
            f"two alike except on {differ:.0%} of the prompts, split so the candidate gains {gain * 100:+.0f} "
            f"points; the peer decides on the first {CONTINUED_PROMPTS[1]} prompts of the same trials. A "
            f"no-better candidate (gain 0, same model) was published in {cont['aa_ours']:.3f} of trials on "
            f"{CONTINUED_PROMPTS[0]} prompts and {cont['aa_peer']:.3f} on {CONTINUED_PROMPTS[1]}",
        ),
    ]
