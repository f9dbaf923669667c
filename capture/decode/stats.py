"""Counters of wire input the decoders could not use, for the manifest's `lost` section.

A decoder never raises on bad input: it counts it here and skips it. The recorder (and the
pcap importer) copy `lost_counters()` into the manifest with `TapeWriter.set_lost`, so a
tape says how much L7 data it did not turn into rows. Counters that are not losses (e.g.
DNS answers whose answer section was cut at the capture prefix but still produced a row)
are in `notes()` and go to the manifest's `extra` if the caller wants them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Names of counters whose input produced no row (or a row without some of its data): these
# are the manifest's lost counters. Every name is `<table>_<reason>`.
LOST = (
    "dns_malformed",  # a message that is not parseable DNS (header or question unreadable)
    "dns_unmatched_answers",  # an answer with no query seen (recording started late, or query lost)
    "dns_tcp_desync",  # TCP DNS bytes that could not be split into messages (a gap inside a length prefix)
    "http_malformed",  # bytes where a request/status line or head was expected and none parsed
    "http_desync",  # a direction lost its place in the stream (gap in a chunked body or a cut head); bytes skipped to the next head
    "http_orphan_responses",  # a response with no request waiting on its connection
    "tls_malformed",  # a TLS handshake record that is not a readable ClientHello
    "http2_malformed",  # HTTP/2 frames or HPACK blocks that do not parse (bad padding, invalid Huffman, index 0, ...): skipped
    "http2_desync",  # an HTTP/2 direction lost its frame boundaries (a gap over a frame header); decoding resumed at the next plausible frame
    "http2_header_block_too_large",  # a header block over 64 KiB (HEADERS + CONTINUATION): its fields dropped, the direction's HPACK table then unknown
    "http2_orphan_streams",  # a response on a client stream whose request HEADERS were not seen: no row
    "http2_streams_evicted",  # more than 1024 streams open on one connection: the oldest written unfinished
)
NOTES = (
    "dns_truncated",  # a message cut at the capture prefix: header and question read, answers partial
    "dns_duplicate_queries",  # a query repeated with the same txid before its answer (kept the first)
    "http_truncated_heads",  # a head cut at the capture prefix: fields after the cut are null
    "tls_truncated",  # a ClientHello cut before its end: fields after the cut are null/legacy
    "http2_connections",  # connections decoded as HTTP/2 (client preface, first SETTINGS frame, or frames of a stream joined mid-way)
    "http2_mid_connection",  # HTTP/2 connections joined after their start: HPACK tables unknown at first (rows may be partial)
    "http2_headers_partial",  # HTTP/2 rows with a header field that indexed HPACK state never seen: those columns are null (headers_partial)
    "http_bodies_skipped_in_kernel",  # long Content-Length bodies whose segments the kernel was told not to send (sizes still exact)
)


@dataclass
class DecodeStats:
    """Per-table counters of skipped or partial input. Shared by all decoders of one recorder."""

    counts: Counter = field(default_factory=Counter)

    def add(self, name: str, n: int = 1) -> None:
        if name not in LOST and name not in NOTES:
            raise KeyError(f"unknown decode counter {name!r}")  # a typo would silently lose a count
        self.counts[name] += n

    def __getitem__(self, name: str) -> int:
        return self.counts[name]

    def lost_counters(self) -> dict[str, int]:
        """Every lost counter (zeros included, so a tape states that nothing was lost)."""
        return {name: self.counts[name] for name in LOST}

    def notes(self) -> dict[str, int]:
        return {name: self.counts[name] for name in NOTES}
