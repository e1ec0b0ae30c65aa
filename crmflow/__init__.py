"""crmflow: move a legacy CRM's customer data into a new CRM through Kafka, and keep both in sync."""

__version__ = "0.1.0"
