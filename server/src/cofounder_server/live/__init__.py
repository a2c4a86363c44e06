"""The Redis live layer: an embedded engine, the key contract, versioned values and a tracked cache."""
