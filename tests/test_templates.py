import pytest

from loglatent.config import TemplatesConfig
from loglatent.templates import TemplateMinerState, mask


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("from 10.1.2.3 port 22", "from <IP> port <NUM>"),
        ("connect 10.1.2.3:8080 ok", "connect <IP> ok"),
        ("neighbor 2001:420:289:2000:0:1ab:fab0:2602 Down", "neighbor <IP> Down"),
        ("peer [fe80::1%eth0]:443 up", "peer <IP> up"),
        ("bind ::1 failed", "bind <IP> failed"),
        ("lease 00:1a:2B:3c:4d:5e and 001a.2b3c.4d5e", "lease <MAC> and <MAC>"),
        ("addr 0x7f3a and id deadbeef12", "addr <HEX> and id <HEX>"),
        ("uuid 123e4567-e89b-12d3-a456-426614174000 done", "uuid <ID> done"),
        ("open /var/log/messages failed", "open <PATH> failed"),
        ("sshd[19939]: took 12.5 s", "sshd[<NUM>]: took <NUM> s"),
        ("at 12:34:56", "at <NUM>:<NUM>:<NUM>"),
        ("std::string and and/or stay", "std::string and and/or stay"),
    ],
)
def test_masks(message: str, expected: str) -> None:
    assert mask(message) == expected


def test_ids_stable_after_restore() -> None:
    settings = TemplatesConfig()
    miner = TemplateMinerState(settings)
    first = miner.template_id("sshd[1]: Accepted password for alice from 10.0.0.1 port 22")
    second = miner.template_id("cron[2]: (root) CMD (run-parts /etc/cron.hourly)")
    state = miner.state_bytes()
    masked = miner.take_new_masked()

    restored = TemplateMinerState(settings, state, masked.items())
    assert restored.template_id("sshd[7]: Accepted password for alice from 10.0.0.9 port 2222") == first
    assert restored.template_id("cron[3]: (root) CMD (run-parts /etc/cron.hourly)") == second
    third = restored.template_id("kernel: eth0 link down")
    assert third not in (first, second)


def test_generalised_template_keeps_id() -> None:
    miner = TemplateMinerState(TemplatesConfig())
    first = miner.template_id("session opened for user alice by root")
    assert miner.template_text(first) == "session opened for user alice by root"
    again = miner.template_id("session opened for user bob by root")
    assert again == first
    assert miner.template_text(first) == "session opened for user <*> by root"
    assert miner.take_changed() == {first: "session opened for user <*> by root"}


def test_long_message_is_truncated_for_mining() -> None:
    miner = TemplateMinerState(TemplatesConfig(max_message_chars=100))
    template_id = miner.template_id("payload " + "x" * 1_000_000)
    assert miner.truncated == 1
    assert len(miner.template_text(template_id)) <= 100
