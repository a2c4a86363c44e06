"""The Redis live layer, the only code that speaks Redis: the client the services and the
executor use (named round trips), the key contract, the executor control channel, versioned
values, a tracked cache, the pub/sub subscriber and an embedded engine."""
