"""Ray Serve deployments (ingress, retrieve, rank, rerank), pure business rules, and the app builder."""
