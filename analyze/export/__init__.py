"""OpenTelemetry out: a tape's exchanges as OTLP spans and metrics, sent over OTLP/HTTP or written as JSON Lines.

May import a Tape, the naming core (analyze.enrich, analyze.sums) and analyze.reports.filters; never capture, never analyze.render."""
