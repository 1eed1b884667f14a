"""FocalServe gateway."""
