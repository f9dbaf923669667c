"""Wire bytes -> rows: DNS, HTTP/1.x, TLS ClientHello, request/response pairing, TCP segment ordering.

Pure (bytes in, rows out), shared by the live recorder and the importers. May import flowtape's core; never capture.live."""
