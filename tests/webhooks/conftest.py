"""Fixtures of the webhook tests: a real receiver on loopback, and apps that deliver to it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.webhooks.receiver import RawReceiver, Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.close()


@pytest.fixture
def raw_receiver() -> Iterator[Callable[[bytes], RawReceiver]]:
    """Receivers on loopback that answer each request with the given raw bytes."""
    started: list[RawReceiver] = []

    def start(answer: bytes) -> RawReceiver:
        started.append(RawReceiver(answer).start())
        return started[-1]

    yield start
    for receiver in started:
        receiver.close()
