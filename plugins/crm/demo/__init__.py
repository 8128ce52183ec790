"""Sandbox tooling for local runs and tests: demo data, SMTP sink, Airflow settings (`python -m crm.demo --help`)."""
