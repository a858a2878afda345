"""The same two agents doing the same work the naive way: last writer wins, and work is lost.

Each agent, five times over: reads the document, thinks (a random short pause), appends a
finding and overwrites the document with its whole value, without saying which version
it read. That is what a plain key-value store or a file gives you. Concord refuses such a
write on its default (crdt) documents, 428 "send the version you read", so this example
shows that first, then makes the overwrite two ways the API does allow:

- on a document created with the ``lww`` strategy, which Concord keeps for exactly this
  comparison (``concord compare`` runs every strategy side by side): a PUT without
  ``If-Match`` replaces the present;
- on a crdt document, a PUT with ``If-Match: *``: "as of the current version", so the
  difference from the present to the stale value, its missing findings included, is
  applied.

Every write is answered 200 OK, and still findings vanish: each overwrite erases what the
other agent wrote while this one was thinking. ``two_agents.py`` does the same work
through ``update()`` (the version read as the base) and loses none.

    python examples/lww_loses.py [URL]        # or CONCORD_URL; default http://127.0.0.1:7878

Exits 1 unless both ways lost work (if one did not, the agents never overlapped there).
"""

from __future__ import annotations

import copy
import os
import random
import sys
import threading
import time
from typing import List, Optional

from concord import Client, PreconditionRequired

ROUNDS = 5
AGENTS = ("agent-a", "agent-b")


def run_agent(
    url: str, name: str, doc_id: str, base: Optional[str], errors: List[BaseException]
) -> None:
    """One agent's rounds: read, think, add a finding, overwrite the document."""
    rng = random.Random(name)
    try:
        with Client(url, agent=name) as client:
            for round_no in range(1, ROUNDS + 1):
                value = copy.deepcopy(client.read(doc_id).value)
                time.sleep(rng.uniform(0.01, 0.06))  # thinking, while the other agent writes
                value["findings"].append(f"{name}: finding {round_no}")
                # Not the version read: none (lww), or "*", whatever is there now.
                client.write(doc_id, value, base=base)
    except BaseException as e:  # reported by main, which exits non-zero
        errors.append(e)


def trial(client: Client, url: str, strategy: str, base: Optional[str]) -> List[str]:
    """Both agents at once on a new document; returns the acknowledged findings lost."""
    doc = client.create({"findings": []}, strategy=strategy)
    errors: List[BaseException] = []
    threads = [
        threading.Thread(target=run_agent, args=(url, name, doc.id, base, errors))
        for name in AGENTS
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    final = client.read(doc.id).value["findings"]
    expected = [f"{name}: finding {n}" for name in AGENTS for n in range(1, ROUNDS + 1)]
    return [f for f in expected if f not in final]


def main() -> int:
    """Runs both overwrite trials; 0 if both lost acknowledged work."""
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CONCORD_URL")
    url = url or "http://127.0.0.1:7878"
    with Client(url, agent="setup") as client:
        crdt = client.create({"findings": []})
        try:
            client.write(crdt.id, {"findings": ["an overwrite"]})
            print("unexpected: the crdt document took a write that names no version")
            return 1
        except PreconditionRequired as e:
            print(f"crdt document, PUT without If-Match: refused, {e.status} {e.kind}")

        claim_holds = True
        writes = len(AGENTS) * ROUNDS
        for label, strategy, base in (
            ("lww document, PUT without If-Match", "lww", None),
            ("crdt document, PUT with If-Match: *", "crdt", "*"),
        ):
            lost = trial(client, url, strategy, base)
            print(f"{label}: {writes} writes answered 200 OK, {len(lost)} findings lost")
            for finding in lost:
                print(f"    lost: {finding}")
            claim_holds = claim_holds and bool(lost)
        if not claim_holds:
            print("a run lost nothing: the agents never overlapped there, the claim is unproven")
            return 1
        print("acknowledged work was lost, silently; two_agents.py loses none")
        return 0


if __name__ == "__main__":
    sys.exit(main())
