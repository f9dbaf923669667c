"""flowtape.capture: everything that writes a tape, one folder per stage.

live (eBPF probes and the recorder) -> decode (wire bytes -> rows); k8s (the watcher); importers; synth.
Imports flowtape's core; never flowtape.analyze."""
