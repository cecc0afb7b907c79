"""What the live send panel costs a large send.

Feeds a ``SendPanel`` the progress events of a 1,000,000-row backfill through
``/v1/batch`` (1000 requests of 1000 events: Planned per 25,000-row chunk, and for
every request a Waiting, a RequestSent and an Acknowledged), as fast as they come,
and prints the time per event, the total the panel adds to the send, and how many
times the widgets were redrawn (throttled to ten a second). For scale: the send
itself takes about 196 s at the production ceiling (burst 20, then 5 requests/s).
"""

from __future__ import annotations

import time

from millimetric_nb.progress import Acknowledged, Done, Planned, RequestSent, Waiting
from millimetric_nb.ui.panel import SendPanel

ROWS = 1_000_000
CHUNK = 25_000
PER_REQUEST = 1000


def events() -> list[object]:
    out: list[object] = []
    for _ in range(ROWS // CHUNK):
        out.append(Planned(CHUNK, CHUNK, 0, requests=CHUNK // PER_REQUEST, total_rows=ROWS))
        for _ in range(CHUNK // PER_REQUEST):
            out.append(Waiting("batch", 0.2, "rate_limit"))
            out.append(RequestSent("batch", PER_REQUEST, 300_000))
            out.append(Acknowledged("batch", PER_REQUEST))
    return out


def main() -> None:
    stream = events()
    panel = SendPanel("batch")
    draws = 0
    real = panel._draw

    def counted(now: float | None = None) -> None:
        nonlocal draws
        draws += 1
        real(now)

    panel._draw = counted  # type: ignore[method-assign]
    started = time.perf_counter()
    for event in stream:
        panel(event)  # type: ignore[arg-type]
    took = time.perf_counter() - started
    panel(Done({"sent": ROWS}, took))
    assert panel.counts["sent"] == ROWS
    started = time.perf_counter()
    for _ in range(200):
        real()
    per_draw = (time.perf_counter() - started) / 200
    print(f"panel: one redraw takes {per_draw * 1000:.2f} ms: redrawn on every event, the "
          f"panel would add {per_draw * len(stream):.2f} s")
    print(f"panel: {len(stream):,} events of a {ROWS:,}-row send in {took * 1000:.1f} ms "
          f"({took / len(stream) * 1e6:.1f} us/event), {draws} redraws "
          f"(at most {1 / 0.1:.0f}/s); against a ~196 s send: "
          f"{took / 196 * 100:.3f}% of its time")


if __name__ == "__main__":
    main()
