"""Development and test tooling: process launchers, the local tritonserver runner, the demo loader.

The only package that may import several components; the gateway and training never import it.
"""
