"""The HTTP/JSON API (DESIGN.md section 8): the seed's REST interface over the gRPC service code."""
