"""FocalServe Python client and the HTTP API schemas shared with the server."""
