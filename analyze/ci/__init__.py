"""CI regression gates: `flowtape diff` (two tapes), `flowtape check` (written rules), their rules and CLI.

May import the naming core (analyze.enrich, analyze.sums), analyze.reports and analyze.render."""
