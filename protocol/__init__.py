"""Squall's wire contract: schemas, error catalogue, codecs and a client.

This package imports nothing else of Squall's, so clients and the load
tester can depend on it alone.
"""
