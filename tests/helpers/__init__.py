"""Shared test helpers: tiny models, exported repositories, live servers, images."""
