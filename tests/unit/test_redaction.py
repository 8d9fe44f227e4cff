"""The storage floor shared by inference's generation log, the fine-tuner and the guard."""

from __future__ import annotations

from flywheel.common import redaction


def test_text_ready_to_store_has_no_nul_character() -> None:
    stored = redaction.redact("card 4539 1488 0343 6467\x00 thanks\x00")
    assert stored.text == "card [CARD_NUMBER] thanks" and stored.counts["card_number"] == 1
