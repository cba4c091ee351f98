"""The operator console: sign-in, routes, views, read-only inquiries, static files."""
