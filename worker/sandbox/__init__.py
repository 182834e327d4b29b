"""A local stand-in for Attentive's REST, GraphQL and Privacy APIs and Yotpo's custom events.

- `server`: the HTTP server and its request handler (REST endpoints, control endpoints);
- `state`: what one server holds (configuration, requests seen, rate windows, faults);
- `graphql`, `privacy`, `yotpo`: the other APIs' endpoints, answering from that state;
- `httpserver`: a threaded stdlib HTTP server in the foreground or a background thread.
"""
