"""gRPC servicers: convert messages, call the core, map errors. Nothing else lives here."""
