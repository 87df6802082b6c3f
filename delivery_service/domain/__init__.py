"""The product's rules in plain Python: lifecycle, feedback statuses (the EFS tables), KPIs."""
