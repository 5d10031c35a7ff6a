"""A Flower App whose federation fedaudit audits: task.py (data and model), client_app.py, server_app.py."""
