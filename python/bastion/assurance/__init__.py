"""Security assurance of served models: probe suites, detectors, the go-live gate, attestations."""
