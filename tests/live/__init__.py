"""Tests of the Redis live layer against real Redis engines."""
