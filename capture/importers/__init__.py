"""Existing data into tapes: kubectl dumps (and, next, packet captures).

May import flowtape's core, capture.decode and capture.k8s; never capture.live."""
