"""Business rules and database queries of the control plane; routes stay thin."""
