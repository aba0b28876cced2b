"""Tests of `gemfs serve`, the local Files API server."""
