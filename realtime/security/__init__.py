"""Passwords and tokens: the rules kept pure so they test without a server."""
