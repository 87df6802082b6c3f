"""The link to the MTA, the one home of both directions of its stream: `link` is the
transport (one bidirectional stream, reconnected by itself), `relay` sends the queued
messages of SENDING deliveries out, `ingest` takes the feedback in and commits it."""
