"""`assistant tui`: the owner's Textual UI. It imports `assistant` (the store and the control channel) and
nothing imports it; `assistant tui` execs `python -m tui`."""
