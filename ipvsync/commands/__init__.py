"""Commands that talk to the running daemon (or import files): one module per command."""
