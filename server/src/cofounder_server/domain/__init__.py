"""The domain: jobs, budgets, escalations, events and agent state, free of gRPC and protobuf."""
