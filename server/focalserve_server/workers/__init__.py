"""`focalserve serve --workers N`: N front processes on one port in front of one engine process.

`supervisor` starts and restarts them (each role's entry point is in `processes`); `front` is a
front's app, `engine_client` and `proxy` how it reaches the engine; `engine_server` is the
engine's side; `wire` what both sides share. Images travel in `focalserve_server.pixel_slots`.
"""
