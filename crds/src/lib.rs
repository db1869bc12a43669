//! The Kubernetes API of voice-operator (group `voicebackends.dev`, version `v1alpha1`).
