"""flowtape.analyze: everything that reads a tape — enrichment views, reports, renderers."""
