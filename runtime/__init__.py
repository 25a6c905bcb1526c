"""What every fedcluster process runs with besides the wire.

The command line's shared options and one-line error entry (cli), the event log (events),
the Prometheus endpoint (metrics) and the token check (auth). `events` and `auth` import
nothing of the project's, so the wire (idl) can log through `events`; `cli` and `metrics`
sit above the wire.
"""
