//! Local Kubernetes control plane for the dev loop and the tests.
