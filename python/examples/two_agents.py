"""Two agents build one shared findings list at the same time, and nothing is lost.

Each agent, five times over: reads the document, thinks (a random short pause standing in
for a model call), appends a finding and writes the whole value back *at the version it
read*, through ``Client.update``. While one thinks, the other writes, so most writes are
made from a stale version; Concord merges each into the present instead of letting it
overwrite what was written meanwhile.

    python examples/two_agents.py [URL]       # or CONCORD_URL; default http://127.0.0.1:7878

Exits 1 if a finding is missing from the final document.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from typing import Callable, List

from concord import Client

ROUNDS = 5
AGENTS = ("agent-a", "agent-b")


def thinker(finding: str, rng: random.Random, seen: List[int]) -> Callable[[dict], None]:
    """The function ``update`` calls with a copy of the value: look, think, add."""

    def think(value: dict) -> None:
        seen.append(len(value["findings"]))
        time.sleep(rng.uniform(0.01, 0.06))  # thinking, while the other agent writes
        value["findings"].append(finding)

    return think


def run_agent(
    url: str, name: str, doc_id: str, stale: List[int], errors: List[BaseException]
) -> None:
    """One agent's rounds: read, think, add a finding, write at the version read."""
    rng = random.Random(name)
    try:
        with Client(url, agent=name) as client:
            for round_no in range(1, ROUNDS + 1):
                finding = f"{name}: finding {round_no}"
                seen: List[int] = []
                merged = client.update(doc_id, thinker(finding, rng, seen))
                # More findings than "what I read plus mine": others wrote while I thought.
                if len(merged.value["findings"]) > seen[-1] + 1:
                    stale.append(1)
                print(
                    f"{name} wrote {finding!r}; the document now has "
                    f"{len(merged.value['findings'])} findings"
                )
    except BaseException as e:  # reported by main, which exits non-zero
        errors.append(e)


def main() -> int:
    """Runs both agents on a new document; 0 if every finding is in it."""
    url = (
        sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CONCORD_URL", "http://127.0.0.1:7878")
    )
    with Client(url, agent="setup") as client:
        doc = client.create({"findings": []})
        stale: List[int] = []
        errors: List[BaseException] = []
        threads = [
            threading.Thread(target=run_agent, args=(url, name, doc.id, stale, errors))
            for name in AGENTS
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            print(f"an agent failed: {errors[0]!r}")
            return 1

        final = client.read(doc.id).value["findings"]
        expected = [f"{name}: finding {n}" for name in AGENTS for n in range(1, ROUNDS + 1)]
        missing = [f for f in expected if f not in final]
        print()
        print(
            f"{len(expected)} writes acknowledged, {len(stale)} of them made from a stale version"
        )
        print(f"final document: {len(final)} findings")
        if missing:
            print(f"LOST {len(missing)}: {missing}")
            return 1
        print("nothing was lost: every finding of both agents is in the document")
        return 0


if __name__ == "__main__":
    sys.exit(main())
