"""The shared retry loop: what is retried, what is permanent, and the deadline."""

from __future__ import annotations

import asyncio
import email.utils
import random
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from shared.http_retry import FME_POLICY, SEGMENT_POLICY, Deadline, Outcome, send_with_retry


def run(
    responses: list,
    policy=SEGMENT_POLICY,
    seconds: float = 30.0,
    margin_ms: int = 0,
    timeout: float | None = 5.0,  # the client's own
):
    calls: list[httpx.Request] = []
    slept: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        item = responses[min(len(calls) - 1, len(responses) - 1)]
        if isinstance(item, Exception):
            raise item
        return item

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async def go():
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(handler), timeout=httpx.Timeout(timeout)
        ) as client:
            deadline = Deadline.after(seconds, margin_ms)
            deadline.sleep = fake_sleep
            return await send_with_retry(
                client,
                lambda: client.build_request("POST", "http://sink/v1/batch"),
                policy,
                deadline,
                random.Random(1),
            )

    return asyncio.run(go()), calls, slept


@pytest.mark.parametrize("status", [429, 408, 410, 460, 500, 502, 503, 504, 599])
def test_segment_transient_statuses_are_retried(status: int) -> None:
    result, calls, _ = run([httpx.Response(status), httpx.Response(200)])
    assert result.outcome is Outcome.DELIVERED
    assert len(calls) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 501, 505])
def test_segment_permanent_statuses_are_not_retried(status: int) -> None:
    result, calls, _ = run([httpx.Response(status, text="nope"), httpx.Response(200)])
    assert result.outcome is Outcome.PERMANENT
    assert result.status == status
    assert len(calls) == 1


def test_retry_after_is_honoured() -> None:
    result, _, slept = run([httpx.Response(429, headers={"Retry-After": "3"}), httpx.Response(200)])
    assert result.outcome is Outcome.DELIVERED
    assert slept[0] >= 3


def test_retry_after_as_an_http_date_is_honoured() -> None:
    """RFC 9110 allows Retry-After as a date as well as seconds."""
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=4), usegmt=True)
    result, _, slept = run([httpx.Response(429, headers={"Retry-After": when}), httpx.Response(200)])
    assert result.outcome is Outcome.DELIVERED
    assert 2 <= slept[0] <= 5  # the date has whole seconds: 3 to 4 s from now, and the jitter


def test_retry_after_dates_and_seconds_read_as_the_same_delay() -> None:
    now = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
    later = email.utils.format_datetime(now + timedelta(seconds=7), usegmt=True)
    for value, delay in [("7", 7.0), (later, 7.0), ("garbage", None), ("-3", 0.0)]:
        response = httpx.Response(429, headers={"Retry-After": value})
        assert SEGMENT_POLICY.server_delay(response, now=now.timestamp()) == delay, value


def test_fme_reset_header_is_honoured_and_410_is_permanent() -> None:
    result, _, slept = run(
        [httpx.Response(429, headers={"X-RateLimit-Reset-Seconds-Org": "2"}), httpx.Response(202)], FME_POLICY
    )
    assert result.outcome is Outcome.DELIVERED
    assert slept[0] >= 2
    result, calls, _ = run([httpx.Response(410), httpx.Response(202)], FME_POLICY)
    assert result.outcome is Outcome.PERMANENT
    assert len(calls) == 1


@pytest.mark.parametrize("status", [429, 408, 500, 501, 502, 503, 504, 505, 599])
def test_fme_transient_statuses_are_retried(status: int) -> None:
    result, calls, _ = run([httpx.Response(status), httpx.Response(202)], FME_POLICY)
    assert result.outcome is Outcome.DELIVERED
    assert len(calls) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 413, 460])
def test_fme_other_4xx_are_permanent(status: int) -> None:
    result, calls, _ = run([httpx.Response(status), httpx.Response(202)], FME_POLICY)
    assert result.outcome is Outcome.PERMANENT
    assert len(calls) == 1


def test_transport_errors_are_retried() -> None:
    result, calls, _ = run([httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.Response(200)])
    assert result.outcome is Outcome.DELIVERED
    assert len(calls) == 3


def test_a_transport_error_names_the_host_it_could_not_reach() -> None:
    """An operator reading "ConnectError" in `delivery status` or a log must see which endpoint."""
    result, _, _ = run([httpx.ConnectError("refused")], seconds=0.5)
    assert (result.outcome, result.reason) == (Outcome.TRANSIENT, "ConnectError (sink)")


def test_gives_up_as_transient_when_the_wait_does_not_fit_the_deadline() -> None:
    result, calls, _ = run([httpx.Response(429, headers={"Retry-After": "60"})], seconds=5)
    assert result.outcome is Outcome.TRANSIENT
    assert result.status == 429
    assert len(calls) == 1


@pytest.mark.parametrize("policy", [SEGMENT_POLICY, FME_POLICY])
def test_a_request_gets_ten_attempts_and_the_last_is_not_followed_by_a_wait(policy) -> None:
    result, calls, slept = run([httpx.Response(503, headers={"Retry-After": "2"})], policy, seconds=3600)
    assert result.outcome is Outcome.TRANSIENT
    assert len(calls) == 10  # docs/outbound.md and docs/delivery.md: at most 10 attempts per request
    assert len(slept) == 9
    assert result.wait_s == 2  # what the server asked for, for the caller's own retry


@pytest.mark.parametrize("policy", [SEGMENT_POLICY, FME_POLICY], ids=["segment", "fme"])
def test_backoff_grows_and_is_capped_at_8_seconds(policy) -> None:
    """A wait of its own never eats much of an invocation (docs/outbound.md, docs/delivery.md)."""
    rng = random.Random(7)
    ceilings = [min(policy.max_delay, policy.base_delay * 2**a) for a in range(1, 12)]
    for attempt, ceiling in enumerate(ceilings, start=1):
        assert 0 <= policy.backoff(attempt, rng) <= ceiling
    late = [policy.backoff(attempt, rng) for attempt in (9, 20) for _ in range(200)]
    assert 7.5 < max(late) <= 8.0


def test_backoff_is_exponential_with_full_jitter() -> None:
    rng = random.Random(3)
    samples = {attempt: [SEGMENT_POLICY.backoff(attempt, rng) for _ in range(200)] for attempt in (1, 3, 5)}
    for attempt, waits in samples.items():
        ceiling = min(SEGMENT_POLICY.max_delay, SEGMENT_POLICY.base_delay * 2**attempt)
        # Full jitter: spread over [0, ceiling], not the ceiling itself.
        assert len(set(waits)) == len(waits)
        assert min(waits) < ceiling / 4
        assert max(waits) > ceiling * 3 / 4
    # Exponential: the longest wait of a later attempt is beyond what an earlier one can wait.
    assert max(samples[3]) > SEGMENT_POLICY.base_delay * 2**1
    assert max(samples[5]) > SEGMENT_POLICY.base_delay * 2**3


def test_retries_wait_longer_and_longer() -> None:
    result, calls, slept = run([httpx.Response(503)] * 6 + [httpx.Response(200)], seconds=120)
    assert result.outcome is Outcome.DELIVERED
    assert len(calls) == 7
    # Each wait is drawn under a ceiling that doubles: the later waits go past the first ceilings.
    assert max(slept[3:]) > SEGMENT_POLICY.base_delay * 2**2


def test_fme_waits_for_the_longest_of_its_reset_headers() -> None:
    # FME sends one reset header per exhausted quota; the client must wait for the largest.
    response = httpx.Response(
        429, headers={"X-RateLimit-Reset-Seconds-Org": "2", "X-RateLimit-Reset-Seconds-IP": "7"}
    )
    assert FME_POLICY.server_delay(response) == 7
    result, _, slept = run([response, httpx.Response(202)], FME_POLICY)
    assert result.outcome is Outcome.DELIVERED
    assert slept[0] >= 7


def test_unparseable_reset_header_is_ignored() -> None:
    response = httpx.Response(429, headers={"Retry-After": "soon", "X-RateLimit-Reset-Seconds-IP": "1"})
    assert FME_POLICY.server_delay(response) == 1
    assert FME_POLICY.server_delay(httpx.Response(429, headers={"Retry-After": "soon"})) is None


def test_tls_context_is_built_once_and_verifies_certificates() -> None:
    import ssl

    from shared.http_retry import tls_context
    from shared.outbound.segment_client import http_client

    context = tls_context()
    assert context is tls_context()
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    # Every invocation's client reuses it instead of loading the CA bundle again.
    first, second = http_client(), http_client()
    assert first._transport._pool._ssl_context is context  # type: ignore[attr-defined]
    assert second._transport._pool._ssl_context is context  # type: ignore[attr-defined]


def test_the_tls_context_prepared_in_a_thread_is_the_one_every_caller_gets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from shared import http_retry

    monkeypatch.setattr(http_retry, "_tls", None)
    http_retry.prepare_tls_context()
    got: list[object] = []
    callers = [threading.Thread(target=lambda: got.append(http_retry.tls_context())) for _ in range(8)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(got) == 8
    assert all(context is got[0] for context in got)
    assert http_retry.tls_context() is got[0]


def test_a_retry_after_date_already_past_is_no_wait() -> None:
    now = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
    earlier = email.utils.format_datetime(now - timedelta(seconds=30), usegmt=True)
    response = httpx.Response(503, headers={"Retry-After": earlier})
    assert SEGMENT_POLICY.server_delay(response, now=now.timestamp()) == 0.0


@pytest.mark.parametrize(
    "header",
    [
        "Retry-After",
        "X-RateLimit-Reset-Seconds-Org",
        "X-RateLimit-Reset-Seconds-IP",
        "X-RateLimit-Reset-Seconds-Workspace",
    ],
)
def test_every_fme_reset_header_is_read(header: str) -> None:
    assert FME_POLICY.server_delay(httpx.Response(429, headers={header: "5"})) == 5


def test_the_deadline_keeps_a_margin_of_a_second_and_a_half() -> None:
    assert Deadline(remaining_ms=lambda: 10_000).seconds_left() == 8.5


def test_no_attempt_starts_inside_the_margin() -> None:
    """The margin is the caller's, for its dead letters and answer: a second left within 1.5 s is none."""
    result, calls, _ = run([httpx.Response(200)], seconds=1.0, margin_ms=1500)
    assert (result.outcome, result.attempts, result.reason) == (Outcome.TRANSIENT, 0, "no time left to send")
    assert calls == []
    result, calls, _ = run([httpx.Response(200)], seconds=2.5, margin_ms=1500)
    assert (result.outcome, len(calls)) == (Outcome.DELIVERED, 1)


def test_nothing_is_sent_when_no_time_is_left() -> None:
    result, calls, _ = run([httpx.Response(200)], seconds=0)
    assert (result.outcome, result.attempts, result.reason) == (Outcome.TRANSIENT, 0, "no time left to send")
    assert calls == []


def test_an_attempt_times_out_within_the_time_left_but_not_below_half_a_second() -> None:
    _, calls, _ = run([httpx.Response(200)], seconds=2)
    assert 1.5 < calls[0].extensions["timeout"]["read"] <= 2
    _, calls, _ = run([httpx.Response(200)], seconds=0.2)
    assert calls[0].extensions["timeout"]["read"] == 0.5


def test_an_attempt_waits_no_longer_than_the_clients_own_timeout() -> None:
    """A stalled connection costs one read timeout and a retry, not the whole invocation."""
    _, calls, _ = run([httpx.Response(200)], seconds=600, timeout=3.0)
    assert calls[0].extensions["timeout"]["read"] == 3.0
    _, calls, _ = run([httpx.Response(200)], seconds=600, timeout=None)
    assert calls[0].extensions["timeout"]["read"] == 10.0  # a client without one waits 10 s


def test_a_refusal_says_what_the_receiver_answered_cut_to_200_characters() -> None:
    """The reason goes to the dead letter and `delivery status`: Segment's answer says what is wrong."""
    result, _, _ = run([httpx.Response(400, text="Invalid write key")])
    assert (result.outcome, result.reason) == (Outcome.PERMANENT, "HTTP 400: Invalid write key")
    long = "x" * 150 + "y" * 150
    result, _, _ = run([httpx.Response(503, text=long)], seconds=0.5)
    assert (result.outcome, result.reason) == (Outcome.TRANSIENT, "HTTP 503: " + long[:200])


def test_a_retry_after_shorter_than_the_backoff_waits_the_backoff() -> None:
    result, _, slept = run([httpx.Response(503, headers={"Retry-After": "0"}), httpx.Response(200)])
    assert result.outcome is Outcome.DELIVERED
    assert slept[0] > 0


def test_a_retry_after_longer_than_the_time_left_ends_the_attempts_and_goes_to_the_caller() -> None:
    result, calls, slept = run([httpx.Response(429, headers={"Retry-After": "4"})], seconds=3)
    assert (result.outcome, len(calls), slept) == (Outcome.TRANSIENT, 1, [])
    assert result.wait_s == 4
