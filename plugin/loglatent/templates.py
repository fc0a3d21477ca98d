"""Reduce messages to log templates with the Drain algorithm (the Drain3 package).

Variables are masked before mining: IPv4 and IPv6 addresses (with or without a port), MAC
addresses, UUIDs and hexadecimal ids, file paths and numbers. A template's id is Drain3's cluster
id: it is assigned once, never reused, and stays the same when the template later generalises
(a word becomes ``<*>``).

Notes
-----
A message whose masked text was seen before keeps the template id it got the first time, without
a new pass through the Drain tree. This makes repeated messages cheap, and it makes the id of a
message a function of the persisted state, so a resumed ingest assigns the same ids as an
uninterrupted one. Drain3 itself could move such a message to a newer, closer cluster.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from drain3 import TemplateMiner
from drain3.masking import LogMasker, MaskingInstruction
from drain3.memory_buffer_persistence import MemoryBufferPersistence
from drain3.template_miner_config import TemplateMinerConfig

from loglatent.config import TemplatesConfig

_HEX = r"[0-9A-Fa-f]"
_IPV4 = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}"
_IPV6 = (
    rf"(?:(?:{_HEX}{{1,4}}:){{7}}{_HEX}{{1,4}}"
    rf"|(?=[0-9A-Fa-f:.]*::)(?:{_HEX}{{1,4}}(?::{_HEX}{{1,4}})*)?::(?:{_HEX}{{1,4}}(?::{_HEX}{{1,4}})*)?"
    rf"(?:(?<=:){_IPV4})?)"
)

# Order matters: a MAC or an IPv6 address contains numbers, a path may contain an address.
MASKS: list[tuple[str, str]] = [
    ("MAC", rf"(?<![\w:.-])(?:(?:{_HEX}{{2}}[:-]){{5}}{_HEX}{{2}}|(?:{_HEX}{{4}}\.){{2}}{_HEX}{{4}})(?![\w:.-])"),
    ("IP", rf"(?<![\w:.\]])(?:\[{_IPV6}(?:%[\w.]+)?\](?::\d{{1,5}})?|{_IPV6}(?:%[\w.]+)?)(?![\w:])"),
    ("IP", rf"(?<![\w.])(?:{_IPV4})(?::\d{{1,5}})?(?![\w]|\.\d)"),
    ("ID", rf"(?<![\w-]){_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}(?![\w-])"),
    ("HEX", rf"(?<![\w.])(?:0[xX]{_HEX}+|(?=[0-9A-Fa-f]*[A-Fa-f])(?=[0-9A-Fa-f]*\d){_HEX}{{8,}})(?![\w.])"),
    ("PATH", r"(?<![^\s'\"=(\[,])(?:~|\.{1,2})?(?:/[\w.@+%~-]+)+/?(?=$|[\s'\",;:)\]])"),
    ("NUM", r"(?<![\w.<>-])[-+]?\d+(?:\.\d+)*(?![\w]|\.\d)"),
]


class TemplateMinerState:
    """A Drain template miner whose state can be saved into, and restored from, bytes.

    Parameters
    ----------
    settings
        Drain's similarity threshold, tree depth and the message length mined.
    state
        Bytes from an earlier ``state_bytes()``, or None to start empty.
    known_masked
        Masked message text to template id, as returned by earlier ``take_new_masked()`` calls.
    """

    def __init__(
        self,
        settings: TemplatesConfig,
        state: bytes | None = None,
        known_masked: Iterable[tuple[str, int]] = (),
    ) -> None:
        self.max_message_chars = settings.max_message_chars
        persistence = MemoryBufferPersistence()
        persistence.state = state
        self._persistence = persistence
        self._miner = TemplateMiner(persistence, _drain_config(settings))
        self._masker = self._miner.masker
        self._drain = self._miner.drain
        self._by_masked: dict[str, int] = dict(known_masked)
        self._by_message: dict[str, int] = {}
        self._new_masked: dict[str, int] = {}
        self._changed: set[int] = set()
        self.truncated = 0

    def template_id(self, message: str) -> int:
        """Return the id of ``message``'s template, mining a new template when none matches."""
        template_id = self._by_message.get(message)
        if template_id is not None:
            return template_id

        text = message
        if len(text) > self.max_message_chars:
            text = text[: self.max_message_chars]
            self.truncated += 1
        masked = self._masker.mask(text)
        template_id = self._by_masked.get(masked)
        if template_id is None:
            cluster, change = self._drain.add_log_message(masked)
            template_id = cluster.cluster_id
            if change != "none":
                self._changed.add(template_id)
            self._by_masked[masked] = template_id
            self._new_masked[masked] = template_id

        if len(self._by_message) > 200_000:
            self._by_message.clear()
        self._by_message[message] = template_id
        return template_id

    def template_text(self, template_id: int) -> str:
        cluster = self._drain.id_to_cluster.get(template_id)
        if cluster is None:
            raise KeyError(f"unknown template id {template_id}")
        return str(cluster.get_template())

    def take_changed(self) -> dict[int, str]:
        """Return the templates created or generalised since the last call, with their text."""
        changed = {template_id: self.template_text(template_id) for template_id in sorted(self._changed)}
        self._changed.clear()
        return changed

    def take_new_masked(self) -> dict[str, int]:
        """Return the masked texts first seen since the last call, with their template id."""
        new, self._new_masked = self._new_masked, {}
        return new

    def state_bytes(self) -> bytes:
        self._miner.save_state("checkpoint")
        state = self._persistence.state
        assert state is not None
        return bytes(state)

    @property
    def template_count(self) -> int:
        return len(self._drain.id_to_cluster)


def mask(message: str) -> str:
    """Return ``message`` with its variables masked, as the miner receives it."""
    return _default_masker().mask(message)


def _drain_config(settings: TemplatesConfig) -> TemplateMinerConfig:
    config = TemplateMinerConfig()
    config.drain_sim_th = settings.similarity_threshold
    config.drain_depth = settings.depth
    config.drain_max_children = settings.max_children
    config.drain_max_clusters = None
    config.parametrize_numeric_tokens = True
    config.snapshot_compress_state = True
    config.mask_prefix = "<"
    config.mask_suffix = ">"
    config.masking_instructions = [MaskingInstruction(pattern, name) for name, pattern in MASKS]
    return config


@functools.cache
def _default_masker() -> LogMasker:
    return LogMasker(_drain_config(TemplatesConfig()).masking_instructions, "<", ">")

