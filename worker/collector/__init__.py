"""The Segment collector: Segment's HTTP Tracking API in front of `producers`.

- `app`: the ASGI application (checks, maps and queues each request's messages);
- `asgi`: the little of ASGI it needs; `body`: reading a body within limits;
- `policy`: write keys, refused-key limits per address, browser origins;
- `server`: uvicorn with the deadlines and caps a public endpoint needs;
- `supervisor`: one listening socket, N forked server processes (standard library only);
- `background`: the app served in a thread of this process (tests, the bench).

Nothing is imported here: ``python -m worker.collector.supervisor`` must stay light.
"""
