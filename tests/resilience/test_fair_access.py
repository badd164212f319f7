"""One user cannot starve another, on the real processes: while user A floods text and image
generation at its per-user caps (every refusal retried at once), user B's generations are served.

The services are sized so that A alone could fill every place (batch and queue) without the caps:
it is the per-user cap and the turns across users that keep B's requests admitted.
"""

from __future__ import annotations

import asyncio

import httpx

from bench.fair_load import Limits, Outcomes, fabula_stack, flood, sign_up, until_saturated, victim

LIMITS = Limits(text_batch=2, text_queue=2, text_per_user=2, image_batch=1, image_queue=1, image_per_user=1)
# Every HTTP call is bounded; so is the whole test (victim's requests, then stop the flood).
CALL_TIMEOUT_S = 120.0


async def test_a_flooding_user_does_not_starve_another(tmp_path):
    with fabula_stack(tmp_path, LIMITS) as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=CALL_TIMEOUT_S) as client:
            attacker, target = await sign_up(client, "attacker"), await sign_up(client, "victim")
            attacks, served = Outcomes(), Outcomes()
            stop = asyncio.Event()
            flooding = asyncio.create_task(flood(client, attacker, stop, attacks, text_streams=6, image_streams=3))
            try:
                await until_saturated(client, attacker, attacks)
                await asyncio.wait_for(victim(client, target, served, text_requests=4, image_requests=2),
                                       timeout=4 * CALL_TIMEOUT_S)
            finally:
                stop.set()
                await asyncio.wait_for(flooding, timeout=2 * CALL_TIMEOUT_S)
    assert served.statuses == {200: 6}, (served.statuses, served.messages, stack.log.read_text()[-3000:])
    # A really was at its limits: refused for its cap (not for a full queue), and served too.
    assert attacks.statuses.get(429) and attacks.statuses.get(200), attacks.statuses
    assert all("per user" in message for message in attacks.messages), attacks.messages
