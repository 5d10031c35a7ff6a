"""fedaudit: membership-inference risk audits for federated learning."""

__version__ = "0.1.0"
