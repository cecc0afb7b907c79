"""After the browser tests, the main thread runs no event loop (Playwright's is gone)."""

import asyncio


def test_no_event_loop_is_left_running_by_the_browser_tests():
    # the sync faces pick their path by asking for a running loop: a leaked one would
    # make them start tasks that never run (tests/browser/conftest.py, `browser`)
    assert asyncio._get_running_loop() is None
