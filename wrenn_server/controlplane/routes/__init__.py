"""HTTP routes: one module per resource, request/response models beside the routes."""
