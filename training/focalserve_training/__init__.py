"""FocalServe training: conditional models on open_clip, losses, data, loop, evaluation, export.

Nothing here imports the server; the server only reads what `focalserve_training.export` writes.
"""
