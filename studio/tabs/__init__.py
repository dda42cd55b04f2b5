"""One module a tab; each has build(studio, demo) that lays the tab out and wires its events."""
