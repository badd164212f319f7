"""A 60 MiB hostile JSON body to a sign-in route: 413 before the body is read, and the gateway
process barely grows (its body limit is checked while reading, before anything parses)."""

from __future__ import annotations

import asyncio
import json

from tests.resilience.hostile import MiB, gateway_process, send_hostile_body

HOSTILE_BYTES = 60 * MiB


async def test_a_hostile_body_to_sign_in_gets_413_and_the_gateway_grows_less_than_64_mib(tmp_path):
    with gateway_process(tmp_path / "gateway.log") as gateway:
        await asyncio.sleep(0.5)  # let start-up allocations settle before the baseline
        baseline = gateway.rss_mib()
        gateway.reset_peak_rss()
        replies = await asyncio.gather(
            send_hostile_body(gateway.port, "/user/login", HOSTILE_BYTES, declare_length=True),
            *(send_hostile_body(gateway.port, "/user/login", HOSTILE_BYTES, declare_length=False)
              for _ in range(3)))
        growth = gateway.peak_rss_mib() - baseline
        for reply in replies:
            assert reply.status == 413
            error = json.loads(reply.body)["error"]
            assert error["code"] == "PAYLOAD_TOO_LARGE" and error["field"] == "body"
            assert "4096 bytes" in error["message"]
            # The answer came while the body was still being sent: nobody waited for 60 MiB.
            assert reply.sent_bytes < HOSTILE_BYTES / 2
        assert growth < 64, f"the gateway grew by {growth:.1f} MiB"
        assert gateway.process.poll() is None
