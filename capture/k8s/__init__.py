"""Kubernetes state into the tape: the list+watch watcher, object -> row converters, the version store.

May import flowtape's core; nothing of capture.live or analyze."""
