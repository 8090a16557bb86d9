"""The API's models, a module per resource: what a request carries and what an answer holds.

Routes take and return these, services take them (or domain types), and every limit is declared here once,
on the field, so `/openapi.json` states it and a request that breaks it is a 400 `invalid_request` before
any service runs. Limits the host agent checks as well come from `wrenn_server.proto.limits`.

    common     the request base, sizes, timestamps
    capsules   create, the capsule
    exec       run a command (foreground / background)
    processes  processes started in a capsule, signals
    streams    WebSocket frames of the exec stream and the terminal
    files      paths, listings, the upload body
    snapshots  snapshot templates
    metrics    capsule samples, team stats, usage
    hosts      agent registration, heartbeat, credentials
    errors     the error body
    health     liveness
"""
