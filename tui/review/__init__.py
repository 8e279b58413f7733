"""The review queue: the table of saved moments, the detail pane with the score over time, playing a clip."""
