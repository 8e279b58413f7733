"""The protocol of DESIGN §3 without I/O: messages in, messages and facts out."""
