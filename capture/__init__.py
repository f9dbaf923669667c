"""flowtape.capture: everything that writes a tape — probes, watchers, decoders, importers, synth."""
