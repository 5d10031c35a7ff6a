"""The federation: Flower ClientApp and ServerApp on Ray, with an AuditedStrategy that reports every round.

Importing this package does not import Flower or TensorFlow; the modules below do.
"""
