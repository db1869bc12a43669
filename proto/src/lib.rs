//! The worker contract: gRPC API between the operator, the workers and external agent services.
