"""The Squall node: settings, storage, services, and the server that runs them."""
