"""The HTTP face of the center: app factory, routes, request and response schemas, middleware, limits."""
