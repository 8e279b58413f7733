"""The Textual labelling UI; it talks to the device only through `assistant`'s store API."""
