"""Squall's HTTP surface: JSON handlers over the same services as the socket."""
