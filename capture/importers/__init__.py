"""Existing data into tapes: packet captures (pcap.py, pcap_reader.py, packets.py, tcp_conns.py) and
kubectl dumps (kubectl.py); cli.py holds the `flowtape import` group.

May import flowtape's core, capture.decode and capture.k8s; never capture.live."""
