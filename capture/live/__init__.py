"""The live eBPF recorder: probes (flows, connections, L7), their loader, the ring buffer, the recorder loop.

Needs bcc and a running kernel. May import flowtape's core and capture.decode; nothing of analyze."""
