"""Record whether a notebook's run agrees with the claim it checks.

Every notebook states the claims it reproduces, measures them, and calls `check` once per claim. The
line `check` prints is what readers see and what the test suite reads back from the executed
notebook (`notebooks/conftest.py`), so a run that stops agreeing with its source fails CI instead of
drifting silently.

    from claims import check
    check("GD diverges above 2/L", agrees=bool(final_loss > 1e6), evidence=f"loss after 100 steps = {final_loss:.3g}")

Sources are sometimes wrong. When a notebook finds that a claim does not hold, it says why in the
text and passes `expected=False`: the verdict is still printed as DISAGREES, and the test then fails
if a later run *agrees* (the notebook's explanation would have gone stale).
"""

from __future__ import annotations

PREFIX = "CLAIM"
AGREES = "AGREES"
DISAGREES = "DISAGREES"
EXPECTED_NOTE = " (expected: see the notebook)"


def check(claim: str, *, agrees: bool, evidence: str, expected: bool = True) -> bool:
    """Print one verdict line, `CLAIM [AGREES] <claim> | <evidence>`, and return `agrees`.

    Args:
      claim: the statement from the source text, in one line.
      agrees: whether this run's numbers agree with it.
      evidence: the numbers that decided it, in one line.
      expected: whether the notebook expects agreement; False for a claim it shows to be wrong.
    """
    if "\n" in claim or "\n" in evidence or "|" in claim:
        raise ValueError("claim and evidence must be single lines, and the claim must not contain '|'")
    verdict = AGREES if agrees else DISAGREES
    note = "" if expected else EXPECTED_NOTE if not agrees else " (the notebook expected DISAGREES)"
    print(f"{PREFIX} [{verdict}{note}] {claim} | {evidence}")
    return bool(agrees)


def parse(text: str) -> list[dict]:
    """The verdicts printed by `check` in `text` (a notebook's stream output), in order.

    Each is a dict with `verdict` ("AGREES" or "DISAGREES"), `expected` (True when the notebook
    expected AGREES), `claim` and `evidence`.
    """
    found = []
    for line in text.splitlines():
        if not line.startswith(PREFIX + " ["):
            continue
        tag, _, rest = line[len(PREFIX) + 2 :].partition("] ")
        verdict, _, note = tag.partition(" ")
        claim, _, evidence = rest.partition(" | ")
        # Any note after the verdict means the notebook expected DISAGREES.
        found.append({"verdict": verdict, "expected": not note, "claim": claim, "evidence": evidence})
    return found
